"""Export realized modules to deployable artifacts (.pte via ExecuTorch/XNNPACK, .tflite via litert-torch),
each verified against eager PyTorch with the real runtime."""

from host.export.artifact import Artifact
from host.export.pte import export_pte, run_pte
from host.export.tflite import export_tflite, run_tflite

__all__ = ["Artifact", "export_pte", "export_tflite", "run_pte", "run_tflite"]

"""ExecuTorch adapter: runs XNNPACK-delegated ``.pte`` programs through ``executorch.runtime``.

The only module of the agent that imports torch, and only inside the worker process.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import numpy as np

from device_agent.errors import invalid
from device_agent.runtimes import TensorSpec, check_inputs

log = logging.getLogger(__name__)
NAME = "executorch"

# c10::ScalarType codes reported by MethodMeta.
_SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32",
                 7: "float64", 11: "bool"}
_default_threads: int | None = None
_current_threads: int | None = None


def version() -> str:
    """Installed ExecuTorch version."""
    return importlib.metadata.version("executorch")


def _import_bindings_without_exporter():
    """Import the runtime bindings without running ``executorch.exir.__init__``.

    The bindings import ``executorch.exir._warnings`` (two small decorators) and the ``executorch.exir``
    package's ``__init__`` imports the whole exporter and torchao: ~10 s more per worker start on this
    machine, for code the runtime never calls. The package is registered as a bare namespace while the
    bindings load, then unregistered, so a later ``import executorch.exir`` still gets the real package.
    """
    import importlib.util
    import sys
    import types

    if "executorch.exir" in sys.modules:
        import executorch.extension.pybindings.portable_lib as lib

        return lib
    spec = importlib.util.find_spec("executorch.exir")
    if spec is None or not spec.submodule_search_locations:  # another layout: import it the slow way
        import executorch.extension.pybindings.portable_lib as lib

        return lib
    bare = types.ModuleType("executorch.exir")
    bare.__path__ = list(spec.submodule_search_locations)
    sys.modules["executorch.exir"] = bare
    try:
        import executorch.extension.pybindings.portable_lib as lib
    finally:
        if sys.modules.get("executorch.exir") is bare:
            del sys.modules["executorch.exir"]
    return lib


def warm_up_import() -> None:
    """Import the runtime (and torch) once when the worker starts, not inside the first benchmark."""
    global _default_threads, _current_threads
    lib = _import_bindings_without_exporter()
    import torch  # noqa: F401
    from executorch.runtime import Runtime

    Runtime.get()
    _default_threads = _current_threads = lib._threadpool_get_thread_count()


def set_threads(threads: int) -> None:
    # The XNNPACK threadpool is process-global; resetting it is only safe between runs, which is the case
    # here because the worker runs one benchmark at a time.
    global _current_threads
    import executorch.extension.pybindings.portable_lib as lib

    want = threads or _default_threads or lib._threadpool_get_thread_count()
    if want != _current_threads:
        lib._unsafe_reset_threadpool(int(want))
        _current_threads = want


def current_threads() -> int:
    """Threads the XNNPACK pool uses now."""
    return int(_current_threads or 0)


class ExecuTorchModel:
    """A loaded ``forward`` method."""

    def __init__(self, path: Path) -> None:
        from executorch.runtime import Runtime, Verification

        try:
            program = Runtime.get().load_program(str(path), verification=Verification.InternalConsistency)
            if "forward" not in program.method_names:
                raise invalid(f"program has no 'forward' method (methods: {sorted(program.method_names)})")
            self._method = program.load_method("forward")
        except RuntimeError as exc:
            raise invalid(f"ExecuTorch cannot load this program: {exc}") from exc
        self._program = program  # keeps the program alive as long as the method
        meta = self._method.metadata
        self._specs = []
        for i in range(meta.num_inputs()):
            info = meta.input_tensor_meta(i)
            dtype = _SCALAR_TYPES.get(info.dtype())
            if dtype is None:
                raise invalid(f"input {i} has ExecuTorch scalar type {info.dtype()}, which the agent cannot feed")
            self._specs.append(TensorSpec(tuple(int(s) for s in info.sizes()), dtype))
        self._inputs: list = []
        self._outputs: list = []

    def input_specs(self) -> list[TensorSpec]:
        """Shapes and dtypes of the model's inputs."""
        return list(self._specs)

    def bind(self, inputs: list[np.ndarray]) -> None:
        """Check and hold the inputs for the following invokes (outside the timed loop)."""
        import torch

        check_inputs(self._specs, inputs)
        self._inputs = [torch.from_numpy(np.ascontiguousarray(a)) for a in inputs]

    def invoke(self) -> None:
        """Run the model once on the bound inputs (the only thing inside the timed loop)."""
        try:
            self._outputs = self._method.execute(self._inputs)
        except RuntimeError as exc:
            raise invalid(f"ExecuTorch failed to run the program: {exc}") from exc

    def outputs(self) -> list[np.ndarray]:
        """Outputs of the last invoke, as numpy arrays."""
        return [o.detach().numpy().copy() if hasattr(o, "numpy") else np.asarray(o) for o in self._outputs]


def load(path: Path, threads: int) -> ExecuTorchModel:
    """Load ``path`` with ``threads`` XNNPACK threads (0 = the runtime default)."""
    set_threads(threads)
    return ExecuTorchModel(path)

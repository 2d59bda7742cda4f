"""AutoSculpt device agent: a small gRPC daemon that benchmarks model artifacts on the board it runs on.

Imports neither ``host`` nor ``patterns``; torch is imported only inside the ExecuTorch runtime adapter.
"""

__version__ = "0.1.0"

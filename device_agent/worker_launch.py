"""Entry point of a runtime worker process: pin CPUs first, then serve.

Pinning has to happen before any library starts a thread (numpy's BLAS does so at import time), so this
module imports nothing heavy before ``os.sched_setaffinity``.

    python -m device_agent.worker_launch RUNTIME FD PROGRAMS_CACHED [CPUS]
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Pin to ``CPUS`` (comma-separated, may be empty), then run :func:`device_agent.worker.main`."""
    args = list(sys.argv[1:] if argv is None else argv)
    cpus = {int(c) for c in args[3].split(",") if c} if len(args) > 3 else set()
    if cpus:
        os.sched_setaffinity(0, cpus)
    from device_agent.worker import main as serve

    return serve(args[:3])


if __name__ == "__main__":
    sys.exit(main())

"""Where host-side work runs: in this process, or as tasks on a Ray cluster (``--ray``).

:func:`open_executor` turns the ``--ray`` text into an :class:`Executor`: ``None`` or ``""`` runs every task
inline (the default; Ray is not imported), ``local:N`` starts a private Ray instance with N worker CPUs on this
machine, ``auto`` joins the cluster this machine is part of (``ray start`` was run here), ``ray://HOST:PORT``
connects through the Ray Client. Ray is the optional extra ``autosculpt[cluster]``.

The executor knows nothing of plans or models: it ships a function and its arguments, puts large shared
objects into the object store once, and hands results back as they arrive.
"""

from host.cluster.executor import (
    ClusterSpec,
    Executor,
    InlineExecutor,
    TaskLost,
    open_executor,
)

__all__ = ["ClusterSpec", "Executor", "InlineExecutor", "TaskLost", "open_executor"]

"""Progress events the search emits for the CLI's display (one per candidate, stage changes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from host.search.journal import CandidateRecord


@dataclass(frozen=True)
class Progress:
    """What the CLI shows after each candidate."""

    stage: str  # a host.kinds.Stage
    done: int
    total: int
    message: str = ""
    best: CandidateRecord | None = None


ProgressFn = Callable[[Progress], None]

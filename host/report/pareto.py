"""The Pareto front of (accuracy, cost) points: what the report plots and the final stage picks from."""

from __future__ import annotations

import math
from collections.abc import Sequence


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated in (maximise accuracy, minimise cost), sorted by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0]))
    front: list[int] = []
    best_acc = -math.inf
    for i in order:
        if points[i][0] > best_acc:
            front.append(i)
            best_acc = points[i][0]
    return front

"""The reachability check measures dense and the floor plan again side by side before refusing a search."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from host.errors import SearchError
from host.search.config import SearchConfig
from host.search.runner import SearchRunner


class _Evaluator:
    """Journaled figures (dense, floor) and what a side-by-side re-measurement returns."""

    def __init__(self, journaled: tuple[float, float], again: tuple[float, float]) -> None:
        self.dense = SimpleNamespace(figures={"pi": journaled[0]})
        self.floor = SimpleNamespace(figures={"pi": journaled[1]})
        self.again = again
        self.remeasured: list[list] = []
        self.measurer = SimpleNamespace(figures=self._figures, reference=self.reference)

    def dense_figures(self):
        return self.dense.figures

    def reference(self, measurement):  # no paired dense figure in these rows: the dense one
        return self.dense.figures

    def _figures(self, measurement):
        return measurement

    def remeasure_side_by_side(self, records):
        self.remeasured.append(records)
        return [{"pi": self.again[0]}, {"pi": self.again[1]}]


def _check(tmp_path, evaluator, target="0.8x"):
    config = SearchConfig(out=tmp_path, devices=("local",), objective="latency", target=target)
    floor = SimpleNamespace(measurement=evaluator.floor.figures)
    runner = SimpleNamespace(config=config, _floor_record=lambda _e, _s: floor)
    SearchRunner._check_target_reachable(runner, evaluator, None)
    return floor


def test_reachable_at_once_measures_nothing_more(tmp_path):
    evaluator = _Evaluator((1.0, 0.5), (9.0, 9.0))
    _check(tmp_path, evaluator)
    assert evaluator.remeasured == []


def test_a_ratio_measured_apart_is_checked_side_by_side_before_refusing(tmp_path, caplog):
    evaluator = _Evaluator((1.0, 0.94), (1.0, 0.55))  # the CI case: 0.94x apart, 0.55x side by side
    floor = _check(tmp_path, evaluator)
    assert evaluator.remeasured == [[evaluator.dense, floor]]
    assert "0.94x" in caplog.text and "0.55x" in caplog.text


def test_still_unreachable_side_by_side_is_refused_with_those_figures(tmp_path):
    evaluator = _Evaluator((1.0, 0.94), (2.0, 1.9))
    with pytest.raises(SearchError, match=r"dense 2.000 ms, most aggressive plan 1.900 ms \(measured side by side\)") \
            as caught:
        _check(tmp_path, evaluator)
    assert "at least 0.95x" in caught.value.hint

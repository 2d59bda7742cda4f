"""The safety net for plans that cannot be built, on a real model whose realization really fails (a forward
that checks a layer's width; see tests/unit/host/search/nets.py), independent of what the coupling analysis
lets the search choose: the failure is found and attributed to the layer, and a failed plan can be relaxed.
The journal/final-stage/report side runs in tests/integration/search/test_search_invalid.py (it exports)."""

from __future__ import annotations

import pytest

from host.search.candidate import INVALID_REWARD
from host.search.scorer import CandidateFailure
from patterns import LayerAssignment, Plan
from tests.unit.host.search.nets import choices


def test_a_realization_that_does_not_run_names_the_layer(evaluator):
    # one layer: it is the one responsible, no re-try needed
    with pytest.raises(CandidateFailure) as err:
        evaluator.scorer.realize_checked(Plan.from_mapping({"b": LayerAssignment("channel", "prune50")}))
    assert err.value.stage == "realize" and err.value.layer == "b"
    assert "expects 8 channels after b, got 4" in err.value.reason
    # several layers: the failure happened in the root's forward, right after b ran; the plan realizes
    # with b kept dense, so b is named and the others are not
    plan = Plan.from_mapping({"stem": LayerAssignment("channel", "prune50"), "left": LayerAssignment("kernel", "row1"),
                              "b": LayerAssignment("channel", "prune25")})
    with pytest.raises(CandidateFailure) as err:
        evaluator.scorer.realize_checked(plan)
    assert err.value.layer == "b" and "got 6" in err.value.reason
    # the same plan without b realizes and runs
    evaluator.scorer.realize_checked(Plan.from_mapping({"stem": LayerAssignment("channel", "prune50"),
                                                 "left": LayerAssignment("kernel", "row1")}))


def test_relaxing_a_failed_plan_steps_the_responsible_layer_down(evaluator):
    space = evaluator.space
    floor = space.floor_choices()
    assert space.vocab[floor[space.layer_names.index("b")]] == "channel:prune75"
    relaxed = space.relax(floor, "b")
    changed = [name for name, a, b in zip(space.layer_names, floor, relaxed, strict=True) if a != b]
    assert changed == ["b"]
    cuts = space.choice_cuts()
    assert cuts[relaxed[space.layer_names.index("b")]] <= cuts[floor[space.layer_names.index("b")]]
    # no layer named: every layer on the most aggressive choice in use steps down
    globally = space.relax(floor)
    assert {space.vocab[c] for c in globally} .isdisjoint({"channel:prune75"})
    assert space.relax(space.dense_choices()) is None


def test_evaluate_journals_an_unbuildable_plan_as_invalid_and_goes_on(evaluator):
    space, journal = evaluator.space, evaluator.journal
    evaluator.evaluate_dense()
    bad = choices(space, stem="kernel:row2", b="channel:prune50")
    record = evaluator.evaluate(bad)
    assert not record.valid and record.reward == INVALID_REWARD and record.accuracy == 0.0
    assert record.failed_layer == "b"
    assert record.reason == "realize failed: RuntimeError: ShapeCheckedNet expects 8 channels after b, got 4"
    (stored,) = [r for r in journal.candidates("search")]
    assert stored.status == "invalid" and stored.reason == record.reason
    # the same plan again: the journal's verdict, no second realization
    again = evaluator.evaluate(bad)
    assert again.reused and not again.valid and again.reward == INVALID_REWARD and again.failed_layer == "b"
    # the next plan is evaluated as usual, and invalid rows do not feed the cost model
    good = evaluator.evaluate(choices(space, stem="kernel:row2"))
    assert good.valid and good.accuracy > 0 and good.reward > INVALID_REWARD
    assert journal.count("search", evaluated_only=True) == 2


def test_the_search_stops_only_when_every_candidate_failed(tmp_path):
    from host.errors import SearchError
    from host.search.config import SearchConfig
    from host.search.journal import CandidatePlan, CandidateRecord, Journal
    from host.search.runner import SearchRunner

    def row(i: int, valid: bool) -> CandidateRecord:
        return CandidateRecord(phase="search", plan=CandidatePlan(choices={"b": f"channel:prune{i}"}), accuracy=0.5 * valid,
                               macs=10, params=1, reward=0.5 if valid else INVALID_REWARD, eval_seconds=0.0,
                               status="ok" if valid else "invalid",
                               reason=None if valid else "realize failed: RuntimeError: boom", failed_layer="b")

    with Journal.create(tmp_path, {}) as journal:
        runner = SearchRunner(SearchConfig(out=tmp_path), journal)
        journal.record(row(25, False))
        journal.record(row(50, False))
        with pytest.raises(SearchError) as err:
            runner._check_some_valid()
        assert "every one of the 2 search candidates failed to build (layers responsible: b 2x)" in err.value.message
        assert "2x realize failed: RuntimeError: boom" in err.value.message
        assert str(journal.path) in err.value.hint
        journal.record(row(75, True))  # one that built is enough to go on
        runner._check_some_valid()

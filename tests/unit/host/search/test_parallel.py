"""The task side of cluster evaluation (``host.search.parallel``) against the in-process path, on a real small
net: what a worker scores and exports is what the driver would have (same accuracy and MACs, byte-identical
artifacts, in fp32 and in int8 with the recovered weights shipped back), and a plan that does not build comes
back as plain data naming the stage and the layer."""

from __future__ import annotations

import pickle
from dataclasses import replace

import pytest

from host.search.candidate import candidate_plan
from host.search.parallel import Exported, Failed, Scored, export_plan, score_plan
from tests.unit.host.search.nets import choices

pytestmark = [pytest.mark.slow, pytest.mark.executorch]


@pytest.fixture(scope="module")
def scorer(space_and_data):
    from host.export.int8 import calibration_from
    from host.search.scorer import PlanScorer

    space, data = space_and_data
    x, _ = data.bn_batches[0]
    data = replace(data, calibration=tuple(calibration_from(x, 4)))
    # through pickle, as a cluster's object store hands it to a worker
    return space, pickle.loads(pickle.dumps(PlanScorer(space.graph_model, data)))


def test_worker_scoring_and_export_match_the_driver(scorer, tmp_path):
    space, worker = scorer
    chosen = candidate_plan(space, choices(space, stem="channel:prune50", left="kernel:row1"))
    scored = pickle.loads(pickle.dumps(score_plan(worker, chosen.plan, chosen.choices, keep_weights=True)))
    assert isinstance(scored, Scored) and scored.weights
    model, masks = worker.masked_model(chosen.plan)
    assert scored.accuracy == worker.accuracy(model) and scored.macs == worker.count(model, masks).macs
    for quantize in (False, True):
        exported = export_plan(worker, chosen.plan, chosen.choices, quantize, scored.weights if quantize else None)
        assert isinstance(exported, Exported) and exported.artifact.quantized == quantize
        artifact = exported.write(tmp_path / f"w{int(quantize)}.pte")
        # the driver's own export of the same plan (int8: realized with the same recovered weights)
        weights_from = model if quantize else None
        local = worker.export(worker.realize_checked(chosen.plan, weights_from=weights_from),
                              tmp_path / f"d{int(quantize)}.pte", quantize=quantize)
        assert artifact.sha256 == local.sha256 and artifact.path.read_bytes() == local.path.read_bytes()
    # the shipped weights matter: the same plan quantized with the base model's weights is another program
    base = export_plan(worker, chosen.plan, chosen.choices, True, None)
    assert base.artifact.sha256 != artifact.sha256


def test_a_plan_that_does_not_build_comes_back_as_data(scorer):
    space, worker = scorer
    chosen = candidate_plan(space, choices(space, stem="kernel:row2", b="channel:prune50"))
    failed = pickle.loads(pickle.dumps(score_plan(worker, chosen.plan, chosen.choices)))
    assert isinstance(failed, Failed) and failed.stage == "realize" and failed.layer == "b"
    assert failed.failure().reason.endswith("expects 8 channels after b, got 4")

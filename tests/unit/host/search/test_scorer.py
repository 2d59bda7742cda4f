"""The scorer is the seam candidate evaluation runs across processes on: it, the plans it takes and the
results it gives survive pickling and score the same on the other side."""

from __future__ import annotations

import pickle

import pytest
import torch

from host.search.candidate import candidate_plan
from host.search.measurement import MeasurementSummary
from host.search.scorer import PlanScorer
from tests.unit.host.search.nets import checked_space


def test_a_pickled_scorer_scores_and_realizes_a_plan_as_the_original():
    space, data = checked_space()
    scorer = PlanScorer(space.graph_model, data)
    layer = space.layer_names.index("left")
    picks = space.dense_choices()
    picks[layer] = next(i for i, ok in enumerate(space.choice_mask[layer]) if ok and i != space.keep_index)
    chosen = candidate_plan(space, picks)
    assert chosen.plan.layers  # a real pruning choice, not the dense plan

    clone = pickle.loads(pickle.dumps(scorer))
    plan = pickle.loads(pickle.dumps(chosen))
    assert plan == chosen
    results = []
    for s in (scorer, clone):
        model, masks = s.masked_model(plan.plan)
        cost = s.count(model, masks)
        realized = s.realize_checked(plan.plan)
        with torch.no_grad():
            out = realized(data.example_input)
        results.append((s.accuracy(model), cost.macs, cost.params, out))
    (acc, macs, params, out), (acc2, macs2, params2, out2) = results
    assert (acc, macs, params) == (acc2, macs2, params2)
    assert macs < scorer.count(space.graph_model, None).macs  # the plan did cut something
    torch.testing.assert_close(out, out2)
    summary = MeasurementSummary(p50_ms=1.5, p90_ms=1.8, count=40, dense_p50_ms=2.0)
    assert pickle.loads(pickle.dumps(summary)) == summary


@pytest.mark.slow
def test_a_scorer_of_a_torchvision_model_unpickles_in_a_fresh_process(tmp_path):
    """What a cluster worker does with the run's scorer: a fresh interpreter that never imported torchvision
    unpickles it (torchvision's classes import torchvision, whose ops this CPU torch must declare first)."""
    import subprocess
    import sys

    import torch

    from host.models.loader import load_model
    from host.search.scorer import EvalData, PlanScorer

    model = load_model("torchvision:mobilenet_v3_small", num_classes=10, in_channels=3, image_size=32,
                       model_args={"width_mult": 0.25}).eval()
    x = torch.randn(2, 3, 32, 32)
    (tmp_path / "scorer.pkl").write_bytes(pickle.dumps(PlanScorer(model, EvalData(x[:1], [], [(x, torch.zeros(2))]))))
    code = ("import pickle, sys, torch; s = pickle.load(open(sys.argv[1], 'rb')); "
            "print(type(s.base_model).__module__, tuple(s.base_model(s.data.example_input).shape))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "scorer.pkl")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["torchvision.models.mobilenetv3", "(1,", "10)"]

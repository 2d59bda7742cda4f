"""The persisted device latency model: operator features, the store, the fit, its predictions across models,
and the cost model's warm start from it."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from host.search.costmodel import CostModel
from host.search.devicemodel import (
    FEATURES,
    LEGACY_FEATURES,
    MIN_SAMPLES,
    TRUST_WINDOW,
    VIEWS,
    DeviceLatencyModel,
    LatencyLearner,
    Sample,
    choose_tile,
    operator_features,
    padded,
)

F = {name: i for i, name in enumerate(FEATURES)}


def _features(module: nn.Module, shape=(1, 3, 8, 8)) -> dict[str, float]:
    return dict(zip(FEATURES, operator_features(module, torch.randn(*shape)), strict=True))


def test_features_split_gemm_work_by_kind_with_output_channels_on_the_tile():
    f = _features(nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU()))
    # 12 output channels are computed as 16 (XNNPACK's tile of 8): 64 positions x 9 taps x 3 inputs x 16
    assert f["conv_kxk_mmac"] == pytest.approx(64 * 9 * 3 * 16 / 1e6)
    assert f["gemm_ops"] == 1 and f["other_ops"] == 1  # BatchNorm folds away on the device; the ReLU counts
    assert f["constant"] == 1.0
    same = _features(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()))
    # an off-centre window's zero pad folds into its conv on the device: it costs nothing
    from patterns.pattern_conv import PatternConv

    window = _features(PatternConv((3, 3), (1, 1), (1, 1), [(0, 0)], [nn.Conv2d(3, 12, (2, 3))]))
    assert window["other_ops"] == 0 and window["gemm_ops"] == 1
    assert window["conv_kxk_mmac"] == pytest.approx(64 * 6 * 3 * 16 / 1e6)
    assert same["conv_kxk_mmac"] == f["conv_kxk_mmac"]  # 12 of 16 channels cost what 16 do
    dw = _features(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, groups=3), nn.Conv2d(3, 8, 1)))
    assert dw["conv_dw_mmac"] == pytest.approx(64 * 9 * 8 / 1e6) and dw["conv_kxk_mmac"] == 0
    assert dw["conv_1x1_mmac"] == pytest.approx(64 * 3 * 8 / 1e6)
    lin = _features(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)), (2, 3, 8, 8))
    assert lin["matmul_mmac"] == pytest.approx(2 * 192 * 16 / 1e6) and lin["gemm_ops"] == 1


def test_features_of_a_torchvision_model_at_both_tiles():
    """torchvision's MobileNetV3-small (not ours): every GEMM kind is counted at 8 and 16 channels, 16 never
    below 8, and above it where a layer's channels are not a multiple of 16 (its 24-channel convs)."""
    from host.models.external import import_library

    model = import_library("torchvision").models.mobilenet_v3_small(num_classes=10).eval()
    f = _features(model, (1, 3, 32, 32))
    for kind in ("conv_kxk_mmac", "conv_1x1_mmac", "conv_dw_mmac", "matmul_mmac"):
        assert f[kind] > 0 and f[kind + "_16"] >= f[kind]
    assert f["conv_1x1_mmac_16"] > f["conv_1x1_mmac"]


def test_features_see_attention_written_functionally():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(16, 48)

        def forward(self, x):
            q, k, v = self.qkv(x).reshape(1, 5, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
            return nn.functional.scaled_dot_product_attention(q, k, v)

    f = _features(Attn(), (1, 5, 16))
    assert f["matmul_mmac"] > 5 * 16 * 48 / 1e6  # the qkv projection and the two attention products
    assert f["gemm_ops"] >= 3


def _device(features: np.ndarray, tile: int = 8) -> float:
    """A synthetic board whose GEMMs compute ``tile`` output channels at a time: depthwise MACs cost 4x dense ones,
    each operator 5 us, a 20 us constant."""
    theta = np.array([0.02, 0.010, 0.008, 0.040, 0.012, 0.005, 0.003, 0.05])
    return float(np.asarray(features)[list(VIEWS[tile])] @ theta)


def _random_net(rng: np.random.Generator, depthwise: bool, tiles: np.random.Generator | None = None) -> np.ndarray:
    """A random model's features; its GEMM work counted at 16 channels is the work at 8 times a fixed factor per
    kind, or, with ``tiles``, a random factor per kind and net (as channel counts make it)."""
    f = np.zeros(len(FEATURES))
    f[F["constant"]] = 1
    f[F["conv_kxk_mmac"]] = rng.uniform(1, 20)
    f[F["conv_1x1_mmac"]] = rng.uniform(0, 5)
    f[F["conv_dw_mmac"]] = rng.uniform(0.2, 2) if depthwise else 0.0
    f[F["matmul_mmac"]] = rng.uniform(0, 0.5)
    f[F["gemm_ops"]] = rng.integers(10, 60)
    f[F["other_ops"]] = rng.integers(10, 60)
    f[F["other_melems"]] = rng.uniform(0, 0.5)
    for kind, factor in (("conv_kxk_mmac", 1.2), ("conv_1x1_mmac", 1.1), ("conv_dw_mmac", 1.5), ("matmul_mmac", 1.3)):
        f[F[kind + "_16"]] = f[F[kind]] * (factor if tiles is None else tiles.uniform(1.0, 1.6))
    return f


def test_store_persists_per_device_and_precision_and_skips_bad_lines(tmp_path, caplog):
    model = DeviceLatencyModel("board-1", "fp32", root=tmp_path)
    rng = np.random.default_rng(0)
    for _ in range(MIN_SAMPLES - 1):
        f = _random_net(rng, True)
        model.add(Sample(tuple(f), _device(f), "net"))
    assert not model.ready and model.predict_ms(f) is None  # too few samples: no model, no guess
    model.add(Sample(tuple(f), _device(f), "net"))
    assert model.ready
    with open(model.path, "a") as handle:
        handle.write("{not json\n" + json.dumps({"features": [1, 2], "ms": 1.0}) + "\n")
    with caplog.at_level(logging.WARNING):
        again = DeviceLatencyModel("board-1", "fp32", root=tmp_path)
    assert len(again.samples) == MIN_SAMPLES and "2 malformed line(s) skipped" in caplog.text
    assert DeviceLatencyModel("board-1", "int8", root=tmp_path).samples == []
    assert DeviceLatencyModel("board-2", "fp32", root=tmp_path).samples == []
    assert again.predict_ms(f) == pytest.approx(model.predict_ms(f))


def test_fit_carries_to_a_model_with_operators_it_has_seen_in_other_proportions(tmp_path):
    model = DeviceLatencyModel("board", "fp32", root=tmp_path)
    rng = np.random.default_rng(1)
    for _ in range(40):  # many plans of models with depthwise convolutions, measured with 3% noise
        f = _random_net(rng, True)
        model.add(Sample(tuple(f), _device(f) * rng.normal(1, 0.03), "a"))
    errors = []
    for _ in range(50):  # plans of other models, predicted as ratios to their dense model
        dense, plan = _random_net(rng, True), _random_net(rng, True)
        plan = np.minimum(plan, dense)
        plan[F["constant"]] = 1
        errors.append(abs(model.predict_ratio(plan, dense) / (_device(plan) / _device(dense)) - 1))
    assert np.mean(np.array(errors) <= 0.10) >= 0.9


def _model_plans(rng, tiles, depthwise=True, plans=8):
    """A model's dense features and ``plans`` plans of it (each feature at most the dense one)."""
    dense = _random_net(rng, depthwise, tiles)
    out = []
    for _ in range(plans):
        plan = np.minimum(_random_net(rng, depthwise, tiles), dense)
        plan[F["constant"]] = 1
        out.append(plan)
    return dense, out


@pytest.mark.parametrize("tile", [8, 16])
def test_the_store_keeps_the_tile_its_device_computes_on(tmp_path, tile):
    """Plans of four models measured on a board whose GEMMs run on ``tile``-channel tiles: the store chooses
    that tile, and predicts a fifth model's plans (as ratios to its dense model) within 10%."""
    model = DeviceLatencyModel("board", "fp32", root=tmp_path)
    rng, tiles = np.random.default_rng(11), np.random.default_rng(12)
    for k in range(4):
        dense, plans = _model_plans(rng, tiles)
        for f in [dense, *plans]:
            model.add(Sample(tuple(f), _device(f, tile) * rng.normal(1, 0.02), f"m{k}", run=f"run{k}"))
    assert model.tile == tile and choose_tile(model.samples) == tile
    dense, plans = _model_plans(rng, tiles)
    errors = [abs(model.predict_ratio(p, dense) / (_device(p, tile) / _device(dense, tile)) - 1) for p in plans]
    assert np.mean(np.array(errors) <= 0.10) >= 0.9


def test_a_models_own_speed_cancels_in_the_ratio_rows(tmp_path, monkeypatch):
    """Each model runs at its own speed on the board (cache fit, memory layout: 0.6x to 1.6x of what its
    operators say). Predictions are ratios to the model's dense figure, so that speed cancels, and the fit
    must not let features that are constant within a model (the classifier, the constant) absorb it."""
    rng, tiles = np.random.default_rng(21), np.random.default_rng(22)
    groups = []
    for k, speed in enumerate((0.6, 1.0, 1.6, 0.8)):
        dense, plans = _model_plans(rng, tiles)
        dense[F["matmul_mmac"]] = dense[F["matmul_mmac_16"]] = 0.1 * (k + 1)  # a per-model classifier
        for plan in plans:
            plan[F["matmul_mmac"]] = dense[F["matmul_mmac"]]
            plan[F["matmul_mmac_16"]] = dense[F["matmul_mmac_16"]]
        groups.append([(f, speed * _device(f), f"m{k}", f"run{k}") for f in [dense, *plans]])
    dense, plans = _model_plans(rng, tiles)

    def share_within(tmp) -> float:
        model = DeviceLatencyModel("board", "fp32", root=tmp)
        for group in groups:
            for f, ms, name, run in group:
                model.add(Sample(tuple(f), ms, name, run=run))
        errors = [abs(model.predict_ratio(p, dense) / (_device(p, 8) / _device(dense, 8)) - 1) for p in plans]
        return float(np.mean(np.array(errors) <= 0.10))

    assert share_within(tmp_path / "ratio") >= 0.9
    import host.search.devicemodel as devicemodel

    monkeypatch.setattr(devicemodel, "RATIO_WEIGHT", 0.0)  # absolute rows only: the speeds leak into the fit
    assert share_within(tmp_path / "absolute") < 0.9


def test_samples_counted_before_the_16_channel_columns_serve_the_8_channel_view(tmp_path):
    """A store line or journal row written by an earlier version has 8 features: loaded, used at tile 8, and
    never predicted from at tile 16 (its 16-channel work is unknown)."""
    rng = np.random.default_rng(31)
    path = tmp_path / "board" / "fp32.jsonl"
    path.parent.mkdir(parents=True)
    nets = [_random_net(rng, True) for _ in range(MIN_SAMPLES + 2)]
    path.write_text("".join(json.dumps({"features": list(f[:LEGACY_FEATURES]), "ms": _device(f), "model": "old"})
                            + "\n" for f in nets))
    model = DeviceLatencyModel("board", "fp32", root=tmp_path)
    assert len(model.samples) == len(nets) and model.ready and model.tile == 8
    assert np.isnan(padded(model.samples[0].features)[F["conv_kxk_mmac_16"]])
    assert model.predict_ms(tuple(nets[0][:LEGACY_FEATURES])) == pytest.approx(_device(nets[0]), rel=0.1)
    model.tile = 16
    assert model.predict_ms(tuple(nets[0][:LEGACY_FEATURES])) is None


def test_an_unseen_operator_kind_costs_the_mean_mac_not_nothing(tmp_path):
    model = DeviceLatencyModel("board", "fp32", root=tmp_path)
    rng = np.random.default_rng(2)
    for _ in range(30):  # only models without depthwise convolutions were measured
        f = _random_net(rng, False)
        model.add(Sample(tuple(f), _device(f), "resnets"))
    mac_costs = model.theta[[F["conv_kxk_mmac"], F["conv_1x1_mmac"]]]
    assert model.theta[F["conv_dw_mmac"]] > 0.5 * mac_costs.min()


def test_learner_predicts_before_it_learns_and_reports_its_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOSCULPT_DEVICE_MODELS", str(tmp_path))
    rng = np.random.default_rng(3)
    first = LatencyLearner([("pi", "fp-pi")], "fp32", "a@[1, 3, 32, 32]", tuple(_random_net(rng, True)))
    assert first.report() is None and first.predict_ratio(first.dense_features) is None
    for _ in range(12):
        f = _random_net(rng, True)
        first.learn(tuple(f), {"pi": _device(f)}, {"pi": _device(np.array(first.dense_features))}, search=True)
    dense = _random_net(rng, True)
    second = LatencyLearner([("pi", "fp-pi")], "fp32", "b@[1, 3, 32, 32]", tuple(dense))
    assert second.ready and len(second.models["pi"].samples) == 12  # the first search's, from the store
    plan = np.minimum(_random_net(rng, True), dense)
    plan[F["constant"]] = 1
    truth = _device(plan)
    second.learn(tuple(plan), {"pi": truth}, {"pi": _device(dense)}, search=True)
    second.learn(tuple(plan), {"other": 1.0}, {"pi": _device(dense)}, search=True)  # not a device of the run
    report = second.report()
    assert report["predicted"] == 1 and report["store_models"] == ["a@[1, 3, 32, 32]", "b@[1, 3, 32, 32]"]
    predicted = second.models["pi"].samples[-1].predicted_ms
    assert report["median_error"] == pytest.approx(abs(predicted - truth) / truth)
    assert report["store_samples"] == 13


def test_trust_is_earned_by_recent_predictions_and_needs_the_models_operator_kinds(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOSCULPT_DEVICE_MODELS", str(tmp_path))
    rng = np.random.default_rng(4)
    dense = _random_net(rng, True)
    learner = LatencyLearner([("pi", "fp-pi")], "fp32", "a@[1, 3, 32, 32]", tuple(dense))
    assert learner.distrust() == "pi: 0 measurement(s) on this device, trust needs 8"

    def measure(noise: float = 1.0) -> None:
        plan = np.minimum(_random_net(rng, True), dense)
        plan[F["constant"]] = 1
        learner.learn(tuple(plan), {"pi": _device(plan) * noise}, {"pi": _device(dense)}, search=True)

    for _ in range(MIN_SAMPLES):
        measure()
    assert "trust needs 8" in learner.distrust()  # a model, but too few samples to judge it
    for _ in range(2):
        measure()
    assert learner.distrust() == ""  # the first 6 judged by leaving each out, the 2 after by their predictions
    assert [s.predicted_ms is None for s in learner.models["pi"].samples] == [True] * MIN_SAMPLES + [False] * 2
    ratios = learner.predict_ratios(tuple(dense))
    assert ratios == {"pi": pytest.approx(1.0)}
    measure(noise=1.5)  # one prediction 33% off: still trusted
    assert learner.distrust() == ""
    measure(noise=0.6)  # a second one: the device is measured again until it earns the trust back
    assert "of its last 8 predictions were within" in learner.distrust()
    regained = next((n for n in range(1, 41) if (measure(), learner.distrust())[1] == ""), None)
    assert regained is not None and regained >= TRUST_WINDOW - 2  # only by new predictions that came true


def test_an_operator_kind_never_measured_is_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOSCULPT_DEVICE_MODELS", str(tmp_path))
    rng = np.random.default_rng(5)
    dense = _random_net(rng, False)  # no depthwise convolution measured
    learner = LatencyLearner([("pi", "fp-pi")], "fp32", "resnet@[1, 3, 32, 32]", tuple(dense))
    for _ in range(MIN_SAMPLES + TRUST_WINDOW):
        plan = np.minimum(_random_net(rng, False), dense)
        plan[F["constant"]] = 1
        learner.learn(tuple(plan), {"pi": _device(plan)}, {"pi": _device(dense)}, search=True)
    assert learner.distrust() == ""
    mobile = LatencyLearner([("pi", "fp-pi")], "fp32", "mobile@[1, 3, 32, 32]", tuple(_random_net(rng, True)))
    assert "never measured conv_dw_mmac" in mobile.distrust()


def test_cost_model_prior_moves_to_the_pseudo_samples_and_measurements_refine_it():
    shares = np.full(10, 0.1)
    model = CostModel(shares, {1: 0.5, 2: 0.5}, 3)  # by MACs, choices 1 and 2 cut the same
    rng = np.random.default_rng(0)
    plans = [rng.integers(0, 3, 10) for _ in range(12)]
    # the device model says choice 2 saves nothing (a kernel form that runs at dense speed)
    pseudo = [(p, 1 - 0.5 * model.features(p)[1]) for p in plans]
    prior = model.set_prior(pseudo)
    assert prior[0] == 0 and prior[1] == pytest.approx(-0.5, abs=0.05) and abs(prior[2]) < 0.05
    assert model.predict(np.full(10, 2)) == pytest.approx(1.0, abs=0.05)
    model.fit([])  # no measurement yet: the moved prior, not the MAC one
    assert model.predict(np.full(10, 2)) == pytest.approx(1.0, abs=0.05)
    fresh = CostModel(shares, {1: 0.5, 2: 0.5}, 3)
    fresh.restore_prior(prior)
    assert np.allclose(fresh.weights, prior)
    with pytest.raises(ValueError, match="search space"):
        fresh.restore_prior(prior[:2])


def test_warm_start_moves_the_search_cost_model_and_a_resume_keeps_it(evaluator, space_and_data):
    """The evaluator's warm start on a store filled by another model's measurements (a board where each
    operator costs as much as 2 MMAC, so cutting channels saves less than the MACs say); the prior it picks is
    kept in the journal and comes back unchanged on a resume, whatever the store learned meanwhile."""
    from host.search.candidate import CandidateEvaluator

    space, data = space_and_data
    assert evaluator.warm_start_cost_model().startswith("MACs")  # no device: nothing to start from
    evaluator.journal.set_value("cost_prior", None)
    dense = operator_features(space.graph_model, data.example_input)
    learner = LatencyLearner([("board", "fp-board")], "fp32", "shape-checked@[1, 1, 16, 16]", dense)
    rng = np.random.default_rng(0)

    def board(f) -> float:
        f = np.asarray(f)
        return 0.01 + 0.05 * f[F["conv_kxk_mmac"] : F["matmul_mmac"] + 1].sum() + 0.1 * f[F["gemm_ops"]]

    for _ in range(10):
        f = np.array(_random_net(rng, False))
        learner.models["board"].add(Sample(tuple(f), board(f), "other-model"))
    evaluator.latency = learner
    mac_prior = evaluator.cost_model.prior.copy()
    source = evaluator.warm_start_cost_model(plans=8)
    assert source.startswith("the device latency model (10 measurements of 1 model(s))")
    moved = evaluator.cost_model.prior.copy()
    assert not np.allclose(moved, mac_prior)
    stored = evaluator.journal.get_value("cost_prior")
    assert stored["weights"] == pytest.approx(list(moved))
    # on plans it was not fitted on, the moved cost model is closer to the device model than the MAC prior
    from host.search.candidate import candidate_plan
    from host.search.projection import sample_prior
    from host.search.scorer import CandidateFailure

    mac_model, gaps, draws = CostModel.from_space(space), [], np.random.default_rng(7)
    for logit in np.linspace(-2, 2, 12):
        plan = sample_prior(space.choice_mask, space.keep_index, float(logit), draws.random(len(space.layer_names)))
        try:
            realized = evaluator.scorer.realize_checked(candidate_plan(space, plan).plan)
        except CandidateFailure:
            continue
        truth = learner.predict_ratio(operator_features(realized, data.example_input))
        gaps.append((abs(evaluator.cost_model.predict(plan) - truth), abs(mac_model.predict(plan) - truth)))
    assert len(gaps) >= 4
    warm, cold = np.mean(gaps, axis=0)
    assert warm < cold / 2
    for _ in range(10):  # the store learns more; a resumed run still starts from the journal's prior
        f = np.array(_random_net(rng, True))
        learner.models["board"].add(Sample(tuple(f), 3 * board(f), "third-model"))
    resumed = CandidateEvaluator(space.graph_model, space, data, evaluator.journal, evaluator.objective, [],
                                 evaluator.bench)
    try:
        resumed.latency = learner
        assert resumed.warm_start_cost_model(plans=8) == source
        assert np.allclose(resumed.cost_model.prior, moved)
    finally:
        resumed.close()


def test_a_trusted_store_prices_unmeasured_candidates_from_their_operators(evaluator, space_and_data):
    """An unmeasured candidate's reward takes the trusted device model's latency for its realized operators;
    once the model is no longer trusted, the cost model's again."""
    from host.kinds import ObjectiveName
    from host.search.journal import CandidatePlan, CandidateRecord
    from host.search.measurement import MeasurementSummary
    from host.search.measurer import Measurer
    from host.search.reward import Constraint, Objective, Target

    space, data = space_and_data
    dense_features = operator_features(space.graph_model, data.example_input)
    learner = LatencyLearner([("board", "fp-board")], "fp32", "checked@[1, 1, 16, 16]", dense_features)
    rng = np.random.default_rng(8)
    dense_ms = _device(np.asarray(dense_features))

    def measure(noise: float = 1.0) -> None:  # plans of other models, predicted (2% off, or noise) and measured
        f = _random_net(rng, False)
        learner.models["board"].add(Sample(tuple(f), _device(f), "other", predicted_ms=_device(f) * noise * 1.02))

    for _ in range(MIN_SAMPLES + TRUST_WINDOW):
        measure()
    assert learner.distrust() == ""
    ev = evaluator
    ev.objective = Objective(name="latency", target=Target.parse("0.7x", "latency"), constraint=Constraint.named("hard"))
    ev.latency = learner
    ev.dense = CandidateRecord(phase="dense", plan=CandidatePlan(), accuracy=0.9, macs=1000, params=10, reward=0.0,
                               eval_seconds=0.0, measurement={"board": MeasurementSummary(p50_ms=dense_ms)})
    ev.measurer = Measurer([], None, ev.journal, ObjectiveName.LATENCY, dense_artifact=None)
    ev.measurer.start_dense(ev.dense.measurement)
    chosen = space.floor_choices()
    chosen[space.layer_names.index("b")] = space.keep_index  # ShapeCheckedNet checks b's width
    realized = ev.scorer.realize_checked(space.decode(chosen)[0])
    features = operator_features(realized, data.example_input)
    figures = ev.device_predicted_figures(features)
    assert figures == {"board": pytest.approx(dense_ms * learner.predict_ratio(features))}
    assert figures["board"] < dense_ms
    want = ev.objective.reward(0.8, 500, 1000, measured=figures, dense_measured={"board": dense_ms})
    assert ev._reward(0.8, 500, None, chosen, features) == pytest.approx(want)
    # the final stage ranks such a row on the prediction (a trusted search under a hard target measures none)
    row = CandidateRecord(phase="search", plan=CandidatePlan(), accuracy=0.8, macs=500, params=5, reward=0.8,
                          eval_seconds=0.0, features=tuple(features))
    assert ev.search_figures(row) == (figures, {"board": pytest.approx(dense_ms)})
    assert ev.cost_estimate(row) == pytest.approx(learner.predict_ratio(features))
    assert ev.row_meets_target(row) == (figures["board"] <= 0.7 * dense_ms)
    # its side-by-side confirmation (1.2x the prediction, dense 2x slower than usual beside it) is learned as a
    # predicted search sample, at the usual dense speed
    before = len(learner.predicted)
    ev.learn_confirmed(row, {"board": 2 * 1.2 * figures["board"]}, {"board": 2 * dense_ms})
    learned = learner.predicted[before:]
    assert len(learned) == 1 and learned[0].ms == pytest.approx(1.2 * figures["board"])
    assert learned[0].predicted_ms == pytest.approx(figures["board"])
    measured = replace(row, measurement={"board": MeasurementSummary(p50_ms=dense_ms / 2, dense_p50_ms=dense_ms)})
    ev.learn_confirmed(measured, {"board": 1.0}, {"board": 1.0})  # a measured row is in the store already
    assert len(learner.predicted) == before + 1
    assert ev.search_figures(measured) == ({"board": dense_ms / 2}, {"board": dense_ms})
    measure(noise=1.5)
    measure(noise=0.6)  # two bad predictions: the device model no longer stands in
    assert ev.device_predicted_figures(features) is None
    assert ev.search_figures(row) is None and ev.cost_estimate(row) == 1.0
    cost = ev.objective.reward(0.8, 500, 1000, measured=ev.predicted_figures(chosen), dense_measured={"board": dense_ms})
    assert ev._reward(0.8, 500, None, chosen, features) == pytest.approx(cost)

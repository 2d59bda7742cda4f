"""Target-aware prior and projection onto the target band."""

from __future__ import annotations

import numpy as np
import pytest

from host.search.costmodel import CostModel
from host.search.projection import Band, TargetBand, calibrate_keep_logit, family_seeds, project, sample_prior

SHARES = np.full(10, 0.1)
MASK = np.ones((10, 4), bool)
MASK[0, 3] = False  # layer 0 cannot take the most aggressive choice


def _model() -> CostModel:
    return CostModel(SHARES, {0: 0.0, 1: 0.25, 2: 0.5, 3: 0.75}, 4)


def test_sample_prior_respects_masks_and_keep_logit():
    rng = np.random.default_rng(0)
    draws = np.stack([sample_prior(MASK, 0, 0.0, rng.random(10)) for _ in range(400)])
    assert not (draws[:, 0] == 3).any()
    assert set(np.unique(draws)) == {0, 1, 2, 3}
    keepy = np.stack([sample_prior(MASK, 0, 5.0, rng.random(10)) for _ in range(200)])
    assert (keepy == 0).mean() > 0.9 > (draws == 0).mean()


@pytest.mark.parametrize("target", [0.6, 0.75, 0.9])
def test_calibrated_prior_costs_about_the_target(target):
    model = _model()
    logit = calibrate_keep_logit(MASK, 0, model, target, samples=128)
    rng = np.random.default_rng(1)
    mean = np.mean([model.predict(sample_prior(MASK, 0, logit, rng.random(10))) for _ in range(400)])
    assert mean == pytest.approx(target, abs=0.03)


def test_calibration_stops_at_the_bound_when_the_prior_cannot_reach_the_target():
    # even with "keep" never preferred, uniform choices cost ~0.53 of dense here: the least keep-y prior wins
    assert calibrate_keep_logit(MASK, 0, _model(), 0.3) == -4.0


@pytest.mark.parametrize("start", [np.zeros(10, np.int64), np.full(10, 2, np.int64)])
def test_projection_lands_in_the_band_and_keeps_masks(start):
    model, band = _model(), Band.around(0.6, 0.04, 0.02)
    out = project(start, MASK, model, band, np.random.default_rng(0))
    assert band.low <= model.predict(out) <= band.high
    assert all(MASK[i, c] for i, c in enumerate(out))


def test_projection_leaves_a_plan_in_the_band_alone():
    model = _model()
    plan = np.array([2, 2, 2, 1, 1, 0, 0, 0, 0, 0])
    band = Band.around(model.predict(plan), 0.05, 0.05)
    np.testing.assert_array_equal(project(plan, MASK, model, band, np.random.default_rng(0)), plan)


def test_band_validation():
    with pytest.raises(ValueError):
        Band(0.5, 0.4)


def test_projection_never_moves_a_layer_to_a_choice_predicted_slower_than_keep():
    # choice 3 was measured to run slower than dense (positive weight): it is on no layer's ladder
    model = CostModel(SHARES, {0: 0.0, 1: 0.25, 2: 0.5, 3: 0.75}, 4)
    model.weights[3] = 0.3
    band = Band.around(0.8, 0.03, 0.03)
    relaxed = project(np.full(10, 2, np.int64), MASK, model, band, np.random.default_rng(0))
    assert band.low <= model.predict(relaxed) <= band.high and not (relaxed == 3).any()
    start = np.full(10, 3, np.int64)  # a proposal full of the slow choice: tightening replaces some of them
    tightened = project(start, MASK, model, band, np.random.default_rng(0))
    assert band.low <= model.predict(tightened) <= band.high
    assert set(tightened[tightened != 3].tolist()) <= {1, 2}


def test_family_seeds_use_one_family_each():
    vocab = ["keep:dense", "kernel:row2", "kernel:row1", "channel:prune50"]
    model = CostModel(SHARES, {0: 0.0, 1: 0.33, 2: 0.67, 3: 0.75}, 4)
    seeds = family_seeds(MASK, vocab, 0, model, Band.around(0.6, 0.05, 0.05), np.random.default_rng(0))
    assert len(seeds) == 2
    kernel, channel = seeds
    assert set(kernel.tolist()) <= {0, 1, 2} and set(channel.tolist()) <= {0, 3}
    for seed in seeds:
        assert 0.55 <= model.predict(seed) <= 0.65


def test_spread_projection_prunes_evenly():
    model = _model()
    out = project(np.zeros(10, np.int64), MASK, model, Band.around(0.75, 0.01, 0.01), np.random.default_rng(0),
                  spread=True)
    assert set(out.tolist()) == {1}  # every layer one step, rather than a few layers at the most aggressive


def test_soft_band_sits_a_little_under_the_target():
    band = TargetBand(0.6, 0.06).for_model(_model())
    assert (band.low, band.high) == pytest.approx((0.54, 0.63))


def test_hard_band_stays_under_the_wall_by_the_cost_models_error():
    model = _model()
    hard = TargetBand(0.6, 0.06, hard=True)
    band = hard.for_model(model)  # not fitted: error 0, the band ends at the target, not over it
    assert (band.low, band.high) == pytest.approx((0.54, 0.6))
    # a fit whose plans are measured 0.1 slower than the MAC prior says: its leave-one-out error is nonzero
    rng = np.random.default_rng(0)
    plans = [rng.integers(0, 4, 10) for _ in range(6)]
    model.fit([(p, model.predict(p) + 0.1 * (i % 2)) for i, p in enumerate(plans)])
    assert 0 < model.error < 0.06
    band = hard.for_model(model)
    assert band.high == pytest.approx(0.6 - model.error)
    assert band.low == pytest.approx(0.54 - model.error)
    out = project(np.zeros(10, np.int64), MASK, model, band, np.random.default_rng(1))
    assert model.predict(out) <= 0.6 - model.error + 1e-9
    model.error = 0.5  # an error larger than the band: the margin is capped at the band's width
    assert hard.for_model(model).high == pytest.approx(0.54)


def _coupled(choices: np.ndarray) -> float:
    """A cost the linear model cannot express: each layer's MACs scale with its own kept share AND the share its
    predecessor kept (pruned outputs shrink the next layer's inputs), as channel pruning does."""
    kept = 1.0 - np.array([0.0, 0.25, 0.5, 0.75])[choices]
    return float(np.mean(kept * np.concatenate([[1.0], kept[:-1]])))


@pytest.mark.parametrize("seed", range(5))
def test_projection_with_an_exact_cost_lands_in_the_band_the_model_misses(seed):
    model, band = _model(), Band(0.35, 0.45)
    rng = np.random.default_rng(seed)
    start = rng.integers(0, 2, 10)  # mild plans: the projection has to tighten
    linear = project(start, MASK, model, band, np.random.default_rng(seed))
    assert band.low <= model.predict(linear) <= band.high
    assert not band.low <= _coupled(linear) <= band.high  # the model's band is not the true one
    exact = project(start, MASK, model, band, np.random.default_rng(seed), exact=_coupled)
    assert band.low <= _coupled(exact) <= band.high
    assert all(MASK[i, c] for i, c in enumerate(exact))


@pytest.mark.parametrize("seed", range(5))
def test_projection_with_an_exact_cost_returns_the_closest_plan_it_saw(seed):
    band = Band(0.4, 0.401)  # narrower than any one move: the walk goes back and forth across it
    seen = []

    def recorded(choices: np.ndarray) -> float:
        seen.append(_coupled(choices))
        return seen[-1]

    out = project(np.zeros(10, np.int64), MASK, _model(), band, np.random.default_rng(seed), exact=recorded)
    misses = [max(band.low - r, r - band.high, 0.0) for r in seen]
    assert max(band.low - _coupled(out), _coupled(out) - band.high, 0.0) == pytest.approx(min(misses))


def test_an_exact_cost_band_is_the_flops_rewards_own():
    band = TargetBand(0.2, 0.05, exact=True).for_model(_model())
    assert (band.low, band.high) == pytest.approx((0.15, 0.25))


def test_a_family_that_cannot_reach_the_band_exactly_gets_no_seed():
    vocab = ["keep:keep", "a:light", "b:heavy", "b:heavier"]
    band = Band(0.3, 0.4)  # family a alone (at best 0.75 of dense) cannot get there; b can
    seeds = family_seeds(MASK, vocab, 0, _model(), band, np.random.default_rng(0), exact=_coupled)
    assert len(seeds) == 1 and set(np.unique(seeds[0])) <= {0, 2, 3}
    assert band.low <= _coupled(seeds[0]) <= band.high
    # without an exact cost, every family gets its seed (the model's estimate may be wrong either way)
    assert len(family_seeds(MASK, vocab, 0, _model(), band, np.random.default_rng(0))) == 2


def test_prior_plans_of_a_real_resnet20_land_in_the_flops_band():
    """ResNet-20 (16 px) at a 0.8 MAC cut, projected as a FLOPs search projects them (the MAC-proportional prior's
    walk corrected by exact counts): the family seed and 20 prior plans all land in the reward band."""
    import torch

    from host.models.loader import load_model
    from host.search.reward import FLOPS_BAND
    from host.search.space import SearchSpace

    torch.manual_seed(0)
    space = SearchSpace(load_model("resnet20", num_classes=10, in_channels=1).eval(), torch.randn(1, 1, 16, 16),
                        name="resnet20")
    prior = CostModel.from_space(space)
    band = TargetBand(0.2, FLOPS_BAND, exact=True).for_model(prior)
    logit = calibrate_keep_logit(space.choice_mask, space.keep_index, prior, 0.2)
    rng = np.random.default_rng(0)
    plans = family_seeds(space.choice_mask, space.vocab, space.keep_index, prior, band, rng, exact=space.mac_ratio)
    plans += [project(sample_prior(space.choice_mask, space.keep_index, logit, rng.random(len(space.layer_names))),
                      space.choice_mask, prior, band, rng, exact=space.mac_ratio) for _ in range(20)]
    ratios = [space.mac_ratio(plan) for plan in plans]
    assert len(ratios) == 21 and all(band.low <= r <= band.high for r in ratios), ratios

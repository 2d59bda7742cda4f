"""Every zoo model goes through the search's own path: graph -> search space -> decoded plan -> masks ->
realized smaller dense model that computes what the masked model computes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from host.models.zoo import available_models
from tests.helpers import zoo_params


def _space(name: str):
    from host.models import create_model
    from host.search.space import SearchSpace

    torch.manual_seed(0)
    model = create_model(name, in_channels=1, image_size=16, width=0.25, num_classes=10).eval()
    return model, SearchSpace(model, torch.randn(1, 1, 16, 16), name=name)


def _random_choices(space, rng: np.random.Generator) -> np.ndarray:
    return np.array([rng.choice(np.flatnonzero(row)) for row in space.choice_mask], np.int64)


@pytest.mark.parametrize("name", zoo_params(available_models()))
def test_search_plans_of_every_zoo_model_realize(name):
    import patterns

    model, space = _space(name)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    assert space.observation().num_nodes >= len(space.layer_names) > 0
    rng = np.random.default_rng(0)
    for choices in (_random_choices(space, rng), _random_choices(space, rng), space.floor_choices()):
        plan, names = space.decode(choices)
        assert set(names) == set(space.layer_names)
        masked = copy.deepcopy(model)
        masks = patterns.apply_masks(masked, plan, x[:1])  # zeroes the copy in place
        # the projection's exact count is the one a candidate is scored with (the masked model's)
        assert space.mac_ratio(choices) == pytest.approx(
            patterns.count(masked, x[:1], masks=masks).macs / patterns.count(model, x[:1]).macs, rel=1e-9)
        small = patterns.realize(model, plan, x[:1])
        with torch.no_grad():
            torch.testing.assert_close(small(x), masked(x), rtol=1e-4, atol=1e-4)
        if plan.layers:
            assert patterns.count(small, x[:1]).macs < patterns.count(model, x[:1]).macs

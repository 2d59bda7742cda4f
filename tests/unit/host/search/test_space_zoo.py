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


def test_int8_spaces_leave_out_the_exact_kernel_mixes():
    """On torchvision's ResNet-18: an fp32 search offers the exact per-filter mixes (kernel:paper6, kernel:rowcol) on
    its 3x3 convs, an int8 search offers none of them but keeps every other choice, kernel:paper6_tiled included."""
    from host.models.external import import_library
    from host.search.space import INT8_EXCLUDED, SearchSpace, excluded_patterns

    model = import_library("torchvision").models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    fp32 = SearchSpace(model, x, exclude=excluded_patterns("fp32"))
    int8 = SearchSpace(model, x, exclude=excluded_patterns("int8"))
    assert set(INT8_EXCLUDED) == {"kernel:paper6", "kernel:rowcol"}
    excluded = [fp32.vocab.index(c) for c in INT8_EXCLUDED]
    assert fp32.choice_mask[:, excluded].any(axis=0).all()
    assert not int8.choice_mask[:, excluded].any()
    kept = np.ones(fp32.num_choices, bool)
    kept[excluded] = False
    assert np.array_equal(fp32.choice_mask[:, kept], int8.choice_mask[:, kept])
    assert int8.choice_mask[:, int8.vocab.index("kernel:paper6_tiled")].any()

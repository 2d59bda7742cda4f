"""Architectures nobody here wrote (tests/fixtures/corpus.py) through the whole pipeline:
graph -> search space -> floor plan and two random plans -> masks == realized smaller model with exact MAC
accounting -> one XNNPACK export of the realized floor plan, checked against eager.

Each step is its own test so a failure names the step. Entries that fail today because of a known cause
being fixed elsewhere carry ``xfail(strict=True)`` with that cause (see KNOWN below); strict, so the mark
must go once the cause is fixed.
"""

from __future__ import annotations

import copy
import functools
import json

import numpy as np
import pytest
import torch

from tests.fixtures import corpus
from tests.helpers import require_models_extra

pytestmark = [pytest.mark.integration, pytest.mark.slow]
require_models_extra()  # required, not skipped

# (step, entry) -> reason: known failures of a step, marked xfail(strict=True) (none at present).
KNOWN: dict[tuple[str, str], str] = {}

REL_TOL = 1e-4  # max |realized - masked| relative to the output scale


def _params(step: str):
    marks = {name: KNOWN.get((step, name)) for name in corpus.NAMES}
    # one xdist group per model: its steps share the cached search space and dependency analysis (seconds to
    # tens of seconds each), so they run in one worker
    return [pytest.param(name, id=name, marks=[pytest.mark.xdist_group(name)]
                         + ([pytest.mark.xfail(strict=True, reason=reason)] if reason else []))
            for name, reason in marks.items()]


@functools.cache
def _space(name: str):
    from host.search.space import SearchSpace

    entry = corpus.entry(name)
    model = corpus.model(name)
    return model, SearchSpace(model, entry.example_input(), name=name)


@functools.cache
def _context(name: str):
    """One dependency analysis of the base model for all of its plans (the search reuses it likewise)."""
    from patterns.family import Context

    return Context(_space(name)[0], corpus.entry(name).example_input())


def _plans(name: str):
    """(label, Plan): the floor plan (most aggressive valid choice on every layer) and two random ones."""
    _, space = _space(name)
    rng = np.random.default_rng(0)
    plans = [("floor", space.decode(space.floor_choices())[0])]
    for i in range(2):
        choices = np.array([rng.choice(np.flatnonzero(row)) for row in space.choice_mask], np.int64)
        plans.append((f"random{i}", space.decode(choices)[0]))
    return plans


def _check_realized(model, plan, x, label: str, ctx=None):
    import patterns

    masked = copy.deepcopy(model)
    masks = patterns.apply_masks(masked, plan, x[:1], context=ctx)  # zeroes the copy in place
    small = patterns.realize(model, plan, x[:1], context=ctx)
    with torch.no_grad():
        want, got = masked(x), small(x)
    scale = max(1.0, float(want.abs().max()))
    err = float((got - want).abs().max())
    assert err <= REL_TOL * scale, f"{label}: realized differs from masked by {err:.3g} (scale {scale:.3g})"
    predicted = patterns.count(model, x[:1], masks).macs
    assert patterns.count(masked, x[:1]).macs == predicted, f"{label}: virtual and applied masks disagree"
    realized = patterns.count(small, x[:1])
    notes = list(getattr(small, "sculpt_notes", []))
    # Non-zero MACs on both sides: a weight that is exactly zero in the base model (timm's Mixer zero-inits
    # its head) is not work the masks predict, but a dense engine still runs it.
    assert realized.macs == predicted, (f"{label}: realized model runs {realized.macs} non-zero MACs, the plan "
                                        f"predicts {predicted} (notes: {notes})")
    assert realized.dense_macs <= patterns.count(model, x[:1]).dense_macs
    return small


@pytest.mark.parametrize("name", _params("graph"))
def test_graph_and_inspect(name):
    model, space = _space(name)  # the search space's own graph: one build per model for every step
    graph = space.graph
    summary = json.loads(json.dumps(graph.to_dict()))  # what `sculpt-host inspect --json` prints
    assert graph.layers and summary
    prunable = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)}
    assert set(graph.layer_names) <= prunable and graph.total_macs > 0


@pytest.mark.parametrize("name", _params("plans"))
def test_floor_and_random_plans_realize_exactly(name):
    model, space = _space(name)
    x = corpus.entry(name).example_input(batch=2, seed=3)
    plans = _plans(name)
    assert plans[0][1].layers, "the floor plan prunes nothing: no layer has a realizable choice"
    import patterns

    base = patterns.count(model, x[:1]).dense_macs
    for label, plan in plans:
        small = _check_realized(model, plan, x, label, _context(name))
        if label == "floor":
            assert patterns.count(small, x[:1]).dense_macs < base


@pytest.mark.executorch
@pytest.mark.parametrize("name", _params("export"))
def test_realized_floor_exports_to_pte_matching_eager(name, tmp_path):
    import patterns
    from host.export import export_pte, run_pte

    model, space = _space(name)
    entry = corpus.entry(name)
    x = entry.example_input()
    plan = _plans(name)[0][1]
    small = patterns.realize(model, plan, x, context=_context(name))
    patterns.fuse_batchnorm(small, x)  # as `sculpt-host export` and the search do before exporting
    artifact = export_pte(small, (x,), tmp_path / f"{name}.pte")
    other = entry.example_input(seed=5)  # not the input the exporter checked
    with torch.no_grad():
        want = small(other)
    got = run_pte(artifact.path, (other,))[0]
    assert float((got - want).abs().max()) <= 1e-3 * max(1.0, float(want.abs().max()))

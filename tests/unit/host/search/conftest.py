"""Fixtures of the search's unit tests: the shape-checked net's search space and an evaluator over it."""

from __future__ import annotations

import pytest

from tests.unit.host.search.nets import checked_evaluator, checked_space


@pytest.fixture(scope="module")
def space_and_data():
    """ShapeCheckedNet's search space and batches (traced once per module)."""
    return checked_space()


@pytest.fixture
def evaluator(tmp_path, space_and_data):
    """A flops-objective evaluator of ShapeCheckedNet over a fresh journal; closed after the test."""
    ev = checked_evaluator(tmp_path, *space_and_data)
    yield ev
    ev.close()
    ev.journal.close()

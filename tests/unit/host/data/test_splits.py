from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from host.data.splits import stratified_indices


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 40), min_size=2, max_size=6), seed=st.integers(0, 2**16),
       val=st.floats(0, 0.4), test=st.floats(0, 0.4), limit=st.one_of(st.none(), st.integers(10, 200)))
def test_stratified_splits_are_disjoint_balanced_and_seeded(counts, seed, val, test, limit):
    labels = np.repeat(np.arange(len(counts)), counts)
    train_idx, val_idx, test_idx = stratified_indices(labels, seed=seed, fractions=(val, test), limit=limit)
    parts = [set(train_idx.tolist()), set(val_idx.tolist()), set(test_idx.tolist())]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    used = len(train_idx) + len(val_idx) + len(test_idx)
    if limit is None:
        assert used == len(labels)
    else:
        # stratified rounding: at most one image per class away from the limit, never more than exist
        assert used <= len(labels) and abs(used - min(limit, len(labels))) <= len(counts)
    for cls, count in enumerate(counts):  # every class keeps at least one image, split by its own share
        kept = sum(int((labels[idx] == cls).sum()) for idx in (train_idx, val_idx, test_idx))
        assert kept >= 1 and (limit is not None or kept == count)
        assert abs(int((labels[test_idx] == cls).sum()) - kept * test) <= 1
    again = stratified_indices(labels, seed=seed, fractions=(val, test), limit=limit)
    assert all(np.array_equal(a, b) for a, b in zip(again, (train_idx, val_idx, test_idx), strict=True))

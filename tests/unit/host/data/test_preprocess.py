"""The recorded preprocessing reproduces, from raw uint8 images, exactly the tensors the search trained on."""

from __future__ import annotations

import json

import pytest
import torch

from host.data import load_dataset
from host.data.preprocess import Preprocessing
from host.errors import DataError


@pytest.mark.parametrize("channels,size", [(1, 16), (3, 20)])
def test_apply_to_raw_digits_equals_the_training_tensors(channels, size):
    from host.data.sources import read_mnist
    from host.data.splits import stratified_indices

    splits = load_dataset("mnist", image_size=size, channels=channels, limit=300, seed=3)
    pre = Preprocessing.from_dict(json.loads(json.dumps(Preprocessing.from_splits(splits).to_dict())))
    assert pre.input_shape == (1, channels, size, size) and pre.class_names == tuple(str(d) for d in range(10))
    raw = read_mnist()
    _, val, _ = stratified_indices(raw.labels, seed=3, fractions=(0.1, 0.2), limit=300)
    x = pre.apply(raw.images[torch.from_numpy(val)])  # 1-channel 28x28 digits
    expected, _ = splits.val.tensors()
    assert x.shape == expected.shape and torch.equal(x, expected)


def test_record_names_every_step_and_bad_records_fail():
    splits = load_dataset("digits", image_size=8, channels=1, limit=100)
    data = Preprocessing.from_splits(splits).to_dict()
    assert [s["op"] for s in data["steps"]] == ["channels", "resize", "scale", "normalize"]
    assert data["input"] == {"shape": [1, 1, 8, 8], "dtype": "float32", "layout": "NCHW"}
    assert data["output"]["num_classes"] == 10
    with pytest.raises(DataError, match="not a preprocessing record"):
        Preprocessing.from_dict({"steps": []})
    with pytest.raises(DataError, match="uint8"):
        Preprocessing.from_splits(splits).apply(torch.zeros(1, 1, 8, 8))


def test_data_warnings_name_tiny_splits_and_chance_level_models():
    from host.data.checks import data_warnings

    tiny = load_dataset("digits", image_size=8, channels=1, limit=90)  # 10 validation images for 10 classes
    warnings = data_warnings(tiny, batch_size=128, val_accuracy=0.11)
    assert len(warnings) == 3
    assert "fewer than one batch of 128" in warnings[0]
    assert "only 10 images for 10 classes" in warnings[1]
    assert "near chance (10.0%)" in warnings[2]
    enough = load_dataset("digits", image_size=8, channels=1)
    assert data_warnings(enough, batch_size=128, val_accuracy=0.9) == []

from __future__ import annotations

import json

import pytest
import torch

from host.data import load_dataset
from host.errors import ConfigError
from host.models.loader import load_model
from host.models.train import TrainConfig, evaluate, get_or_train_checkpoint, train
from host.models.zoo import create_model


def test_training_learns_digits():
    splits = load_dataset("digits", image_size=8, channels=1, limit=600)
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1, image_size=8, width=0.5)
    before = evaluate(model, splits.val)
    seen = []
    result = train(model, splits, TrainConfig(epochs=3, batch_size=32, lr=0.05),
                   progress=lambda *args: seen.append(args))
    assert [s[0] for s in seen] == [1, 2, 3]
    assert result.val_accuracy == pytest.approx(evaluate(model, splits.val))
    assert result.val_accuracy > max(0.6, before + 0.3)
    assert len(result.train_loss) == 3 and result.train_loss[-1] < result.train_loss[0]


def test_training_is_reproducible():
    splits = load_dataset("digits", image_size=8, channels=1, limit=200)
    weights = []
    for _ in range(2):
        torch.manual_seed(5)
        model = create_model("vit_tiny", num_classes=10, in_channels=1, image_size=8, width=0.5)
        train(model, splits, TrainConfig(epochs=1, batch_size=32, lr=0.01, seed=5, threads=1))
        weights.append(model.head.weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)


@pytest.mark.parametrize("batch_size", [456, 228, 114])
def test_short_runs_train(batch_size):
    """1 epoch of 2, 4 or 8 optimizer steps (911 training digits): too short for a one-cycle schedule (4 steps used to divide by zero)."""
    splits = load_dataset("digits", image_size=8, channels=1, limit=1300)
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1, image_size=8, width=0.25)
    before = [p.detach().clone() for p in model.parameters()]
    result = train(model, splits, TrainConfig(epochs=1, batch_size=batch_size))
    assert result.epochs == 1 and len(result.train_loss) == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_evaluate_accepts_plain_datasets_and_loaders(mnist_splits):
    model = create_model("resnet20", num_classes=10, in_channels=1, image_size=16, width=0.25)
    direct = evaluate(model, mnist_splits.val)
    subset = torch.utils.data.Subset(mnist_splits.val, range(len(mnist_splits.val)))
    assert evaluate(model, subset) == pytest.approx(direct)
    loader = torch.utils.data.DataLoader(mnist_splits.val, batch_size=17)
    assert evaluate(model, loader) == pytest.approx(direct)
    assert 0.0 <= direct <= 1.0


def test_bad_config():
    with pytest.raises(ConfigError):
        TrainConfig(epochs=0)


def test_trained_fixture_is_useful_and_cached(trained_resnet20_mnist, mnist_splits, tmp_path, monkeypatch):
    meta = json.loads(trained_resnet20_mnist.with_suffix(".json").read_text())
    assert meta["val_accuracy"] >= 0.85
    model = load_model("resnet20", checkpoint=trained_resnet20_mnist, in_channels=1, image_size=16)
    assert evaluate(model, mnist_splits.test) >= 0.85
    # same key -> the cached file is returned without training
    import host.models.train as train_module
    from tests.fixtures.models import FIXTURE_TRAIN, MNIST_IMAGE_SIZE, MNIST_LIMIT

    def no_training(*_args, **_kwargs):
        raise AssertionError("a cached checkpoint was trained again")

    mtime = trained_resnet20_mnist.stat().st_mtime_ns
    monkeypatch.setattr(train_module, "train", no_training)
    monkeypatch.setattr(train_module, "load_dataset", no_training)
    again = get_or_train_checkpoint("resnet20", "mnist", cache_dir=trained_resnet20_mnist.parent,
                                    config=TrainConfig(**FIXTURE_TRAIN), data_limit=MNIST_LIMIT,
                                    image_size=MNIST_IMAGE_SIZE, in_channels=1, num_classes=10)
    assert again == trained_resnet20_mnist and again.stat().st_mtime_ns == mtime


def test_cache_key_depends_on_config(tmp_path):
    common = {"cache_dir": tmp_path, "data_limit": 100, "image_size": 8, "in_channels": 1, "width": 0.25}
    first = get_or_train_checkpoint("resnet20", "digits", config=TrainConfig(epochs=1, batch_size=32), **common)
    second = get_or_train_checkpoint("resnet20", "digits", config=TrainConfig(epochs=1, batch_size=16), **common)
    assert first != second and first.is_file() and second.is_file()
    assert json.loads(first.with_suffix(".json").read_text())["model_kwargs"]["width"] == 0.25

"""A user's own model on a user's own data: `sculpt-host train` on an ImageFolder the test writes, then a search
from that checkpoint, and a search that trains the same model itself (reusing the cached checkpoint).

FLOPs-objective searches whose checks rest on no measurement: they run beside other tests (phase 1 of
`make test`), not with the `alone` tests of tests/integration/search."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from host.cli.main import main

pytestmark = [pytest.mark.integration, pytest.mark.executorch, pytest.mark.slow, pytest.mark.timeout(900)]

# a classifier nobody in this project wrote, in a module of the user's working directory
USER_MODULE = textwrap.dedent("""
    from torch import nn

    class Net(nn.Module):
        def __init__(self, num_classes=10, in_channels=3):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU(),
                nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
            self.head = nn.Linear(64, num_classes)

        def forward(self, x):
            return self.head(self.body(x).mean(dim=(2, 3)))

    def build(num_classes=10, in_channels=3):
        return Net(num_classes, in_channels)
""")


def write_image_folder(root, per_class: int = 40, seed: int = 0) -> None:
    """Three classes of 24x24 RGB images: vertical bars, dots, noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in ("bars", "dots", "noise"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 80, (24, 24, 3)).astype(np.uint8)
            if name == "bars":
                image[:, i % 4 :: 4] = 230
            elif name == "dots":
                image[i % 5 :: 5, i % 5 :: 5] = 250
            Image.fromarray(image).save(root / name / f"{i}.png")


@pytest.fixture()
def user_project(tmp_path, monkeypatch):
    (tmp_path / "usernet.py").write_text(USER_MODULE)
    write_image_folder(tmp_path / "shapes")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTOSCULPT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


SIZES = ["--data", "imagefolder", "--data-root", "shapes", "--image-size", "16", "--channels", "3"]
TINY_SEARCH = ["--objective", "flops", "--target-flops", "0.3", "--budget", "2", "--bench-runs", "5",
               "--finetune-epochs", "1", "--recover-steps", "2", "--json"]


def test_train_then_search_a_user_model_on_an_image_folder(user_project, capsys):
    code = main(["train", "--model", "usernet:build", *SIZES, "--epochs", "6", "--batch-size", "32",
                 "--out", "ck.pt", "--json"])
    assert code == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["val_accuracy"] > 0.8 and (user_project / "ck.pt").is_file()
    assert json.loads((user_project / "ck.json").read_text())["model_kwargs"]["num_classes"] == 3
    assert main(["search", "--model", "usernet:build", "--checkpoint", "ck.pt", *SIZES, *TINY_SEARCH,
                 "--out", "run"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dense"]["val_accuracy"] > 0.8  # the trained weights, not a fresh model (chance is 1/3)
    final = result["finals"][0]
    assert final["macs"] < result["dense"]["macs"] and final["test_accuracy"] is not None
    assert result["preprocessing"]["output"]["class_names"] == ["bars", "dots", "noise"]


def test_search_trains_a_user_model_itself_and_keys_on_the_images(user_project, capsys):
    cache = user_project / "cache" / "checkpoints"
    assert main(["train", "--model", "usernet:build", *SIZES, "--epochs", "3", "--out", "ck.pt"]) == 0
    assert len(list(cache.glob("*.pt"))) == 1
    # no --checkpoint: the search trains it the same way, so it finds the checkpoint `train` cached
    assert main(["search", "--model", "usernet:build", *SIZES, "--train-epochs", "3", *TINY_SEARCH,
                 "--out", "run"]) == 0
    assert len(list(cache.glob("*.pt"))) == 1
    capsys.readouterr()
    # the same folder path with other images is other data: a new checkpoint, not the stale one
    write_image_folder(user_project / "shapes", seed=1)
    assert main(["train", "--model", "usernet:build", *SIZES, "--epochs", "3", "--out", "ck2.pt"]) == 0
    assert len(list(cache.glob("*.pt"))) == 2

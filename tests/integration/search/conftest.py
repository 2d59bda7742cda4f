"""One tiny latency search against a real local agent, shared by the tests of this directory (a search
costs tens of seconds: graph, masks, recovery steps, exports, ExecuTorch measurements, PPO, fine-tuning)."""

from __future__ import annotations

from dataclasses import replace

import pytest


def tiny_config(out, checkpoint, **changes):
    """The smallest search that still exercises every stage; ``changes`` override SearchConfig fields."""
    from host.devices.policy import BenchPolicy
    from host.search.config import EvalConfig, ModelSpec, PPOSettings, SearchConfig
    from host.search.finetune import FinetuneConfig

    spec = ModelSpec(model="resnet20", data="mnist", image_size=16, in_channels=1, data_limit=1500,
                     checkpoint=str(checkpoint))
    config = SearchConfig(
        out=out, model=spec, devices=("local",), budget=4, objective="latency", target="0.7x",
        final_top=1, export_tflite=False,
        finetune=FinetuneConfig(epochs=1, max_batches_per_epoch=4, distill_alpha=0.5),
        evaluation=EvalConfig(bn_batches=2, bench=BenchPolicy.search(runs=5, seconds=0.05),
                              final_bench=BenchPolicy.final(seconds=0.2, warmup_runs=4), recover_steps=3,
                              min_measured=2),
        ppo=PPOSettings(n_steps=2, batch_size=2, n_epochs=2, hidden=32),
    )
    return replace(config, **changes)


@pytest.fixture(scope="package")  # shared by every test module of this folder
def tiny_search(tmp_path_factory, trained_resnet20_mnist):
    """(config, RunSummary, progress events) of one finished tiny latency search."""
    from host.search.runner import SearchRunner

    config = tiny_config(tmp_path_factory.mktemp("search") / "run", trained_resnet20_mnist)
    progress = []
    result = SearchRunner.start(config, progress=progress.append).run()
    return config, result, progress

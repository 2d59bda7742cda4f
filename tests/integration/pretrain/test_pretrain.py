"""``sculpt-host pretrain``: one policy trained across two zoo models in turn (real FLOPs-reward searches), the
second search starting from the first's policy, a finished pretraining not run again, and the CLI's errors."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _base():
    from host.search.config import EvalConfig, ModelSpec, PPOSettings, SearchConfig

    spec = ModelSpec(data="mnist", image_size=16, in_channels=1, data_limit=400, train_epochs=1, width=0.25)
    return SearchConfig(objective="flops", target=None, devices=(), model=spec, budget=3, target_flops=0.3,
                        export_tflite=False, evaluation=EvalConfig(bn_batches=2, recover_steps=2),
                        ppo=PPOSettings(n_steps=2, batch_size=2, n_epochs=2, hidden=32))  # an update after 2 of 3


def test_one_policy_learns_on_each_model_in_turn(tmp_path):
    from host.search.journal import Journal
    from host.search.pretrain import pretrain

    out = tmp_path / "zoo-policy.pt"
    seen = []
    steps = pretrain(["resnet20", "vgg16"], out, _base(), runs_dir=tmp_path / "runs", proxy_plans=16,
                     on_step=lambda done, total, step: seen.append((done, total, step.model)))
    assert seen == [(1, 2, "resnet20"), (2, 2, "vgg16")]
    assert [s.candidates for s in steps] == [3, 3] and all(s.best_reward is not None for s in steps)
    # how decided the policy is on each model after its search (a collapsed one would propose a single plan)
    assert all(0 < s.spread["entropy"] <= s.spread["uniform_entropy"] and 0 < s.spread["top_probability"] <= 1
               and 0 < s.spread["keep_probability"] < 1 for s in steps)
    first, second = (s.run_dir for s in steps)
    with Journal.open(second) as journal:  # the second search started from the first's policy
        assert journal.metadata["config"]["policy_file"] == str(first / "policy.pt")
        # ... after its proxy warm-up, which spent none of the 3 candidates
        assert journal.metadata["config"]["ppo"]["proxy_plans"] == 16 and journal.get_value("proxy_warmup_done")
    saved = {name: torch.load(path, weights_only=True)["state_dict"]
             for name, path in (("first", first / "policy.pt"), ("out", out))}
    assert saved["out"].keys() == saved["first"].keys()
    assert any(not torch.equal(saved["out"][k], saved["first"][k]) for k in saved["out"])  # it learned on vgg16
    written = torch.load(second / "policy.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved["out"][k], written[k]) for k in written)  # --out is the last search's policy
    # a finished pretraining is read back, not run again
    mtime = (second / "policy.pt").stat().st_mtime_ns
    again = pretrain(["resnet20", "vgg16"], out, _base(), runs_dir=tmp_path / "runs")
    assert [(s.best_reward, s.spread) for s in again] == [(s.best_reward, s.spread) for s in steps]
    assert (second / "policy.pt").stat().st_mtime_ns == mtime


def test_cli_refuses_bad_arguments_with_a_hint(tmp_path, capsys):
    from host.cli.main import main

    assert main(["pretrain", "--models", " , ", "--out", str(tmp_path / "p.pt")]) != 0
    err = capsys.readouterr().err
    assert "at least one model" in err and "hint" in err.lower()
    assert not (tmp_path / "p.pt").exists()
    assert main(["pretrain", "--models", "resnet20", "--proxy-plans", "-1", "--out", str(tmp_path / "p.pt")]) != 0
    err = capsys.readouterr().err
    assert "--proxy-plans -1" in err and "hint" in err.lower()
    with pytest.raises(SystemExit) as helped:
        main(["pretrain", "--help"])
    assert helped.value.code == 0 and "--policy" in capsys.readouterr().out


@pytest.mark.parametrize("keep", [0.45, 0.995])
def test_cli_reports_how_decided_the_policy_is_after_each_model(tmp_path, capsys, monkeypatch, keep):
    """Each model's line gives the policy's entropy and how many layers it keeps, and says so when it proposes the
    dense model (what a pretraining with unbounded logits ended in); --json carries the same figures."""
    from host.cli.main import main
    from host.search import pretrain as module

    spread = {"entropy": 0.02, "uniform_entropy": 2.1, "top_probability": 0.998, "keep_probability": keep}

    def fake(models, out, base, *, on_step, **_kwargs):  # the searches are the test above's; this is the CLI's line
        step = module.PretrainStep(models[0], 1, tmp_path / "run", 16, 96.8, spread)
        on_step(1, 1, step)
        out.write_bytes(b"")
        return [step]

    monkeypatch.setattr(module, "pretrain", fake)
    assert main(["pretrain", "--models", "resnet20", "--out", str(tmp_path / "p.pt")]) == 0
    err = capsys.readouterr().err
    assert "policy entropy 0.02 of 2.10 nats per layer" in err and f"keeps {keep:.0%} of layers" in err
    assert ("it proposes the dense model" in err) == (keep >= module.DENSE_KEEP)
    assert main(["pretrain", "--models", "resnet20", "--out", str(tmp_path / "p.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["searches"][0]["policy_spread"] == spread

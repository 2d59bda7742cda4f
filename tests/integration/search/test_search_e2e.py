"""A tiny search end to end against a real local agent: graph, masks, recovery steps, cost model, export,
ExecuTorch measurement, PPO, journal, final fine-tuning and the report; its policy carried to another model;
an unreachable target; and a real search process SIGKILLed and resumed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from host.search.candidate import WORK_DIR_NAME
from host.search.journal import JOURNAL_NAME, Journal
from tests.integration.search.conftest import tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.executorch, pytest.mark.slow, pytest.mark.timeout(900)]

TINY = ["--image-size", "16", "--channels", "1", "--data-limit", "1500", "--bench-runs", "5",
        "--finetune-epochs", "1", "--recover-steps", "3", "--seed", "0"]


def test_tiny_latency_search_end_to_end(tiny_search):
    config, result, progress = tiny_search
    run = config.out
    assert result.candidates_evaluated == 4
    dense = result.dense
    assert dense.latency_ms["local"] > 0 and dense.val_accuracy > 0.5
    assert len(result.finals) == 1
    final = result.finals[0]
    assert final.latency_ms["local"] > 0 and final.test_accuracy is not None
    assert final.macs < dense.macs
    for name in ("result.json", "report.md", "pareto.png", "patterns.png", "reward_curve.png", "policy.pt",
                 "final-1.pte", "final-1.plan.json"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    with Journal.open(run) as journal:
        assert journal.count("dense") == 1 and journal.count("search") >= 4
        measured = [r for r in journal.candidates("search") if r.measurement and not r.reused]
        assert measured  # the first min_measured accurate-enough candidates are always measured
        # every measured artifact is cached under (sha, fingerprint)
        assert journal.measurement_count() >= len({r.artifact_sha256 for r in measured})
        assert journal.get_value("keep_logit") is not None  # the calibrated prior, kept for a resume
        # the final model is one of the MEASURED candidates (its speed is known, not predicted)
        final_row = journal.candidates("final")[0]
        assert any(r.plan_hash == final_row.plan_hash for r in measured)
    assert {p.stage for p in progress} >= {"prepare", "dense", "search", "final", "report"}
    assert json.loads((run / "result.json").read_text())["budget"] == 4


def test_policy_carries_to_another_model(tiny_search, tmp_path):
    """--policy from the ResNet-20 run starts a search on a VGG-16 (other size, other topology)."""
    import torch

    from host.models.zoo import create_model
    from host.search.runner import SearchRunner

    config, _result, _progress = tiny_search
    torch.manual_seed(0)
    vgg = create_model("vgg16", num_classes=10, in_channels=1, image_size=16, width=0.25)
    checkpoint = tmp_path / "vgg16.pt"
    torch.save(vgg.state_dict(), checkpoint)
    base = tiny_config(tmp_path / "vgg", checkpoint)
    # flops objective: no device work; n_steps > budget: no PPO update, so the saved policy IS the loaded one
    other = replace(base, model=replace(base.model, model="vgg16", width=0.25), objective="flops", target=None,
                    target_flops=0.3, devices=(), budget=2, final_top=0,
                    policy_file=str(config.out / "policy.pt"), ppo=replace(base.ppo, n_steps=8, batch_size=8))
    result = SearchRunner.start(other).run()
    assert result.candidates_evaluated == 2
    loaded = torch.load(config.out / "policy.pt", weights_only=True)["state_dict"]
    saved = torch.load(other.out / "policy.pt", weights_only=True)["state_dict"]
    assert loaded.keys() == saved.keys()
    for key in loaded:
        assert torch.equal(loaded[key], saved[key]), key


def test_unreachable_latency_target_fails_before_the_search(tmp_path, trained_resnet20_mnist):
    from host.errors import SearchError
    from host.search.runner import SearchRunner

    # 0.1 us: below what even the most aggressive plan measures, so the search must not start
    config = tiny_config(tmp_path / "run", trained_resnet20_mnist, target="0.0001ms")
    with pytest.raises(SearchError, match="no plan reaches") as caught:
        SearchRunner.start(config).run()
    assert "(measured side by side)" in str(caught.value)  # measured again before refusing
    assert not (config.out / JOURNAL_NAME).exists()  # nothing half-made left: the same --out works again


def _rows(run_dir):
    conn = sqlite3.connect(run_dir / JOURNAL_NAME)
    try:
        return conn.execute("SELECT id, phase, plan_hash, created, reused FROM candidates ORDER BY id").fetchall()
    finally:
        conn.close()


def _agent_store(procs) -> Path | None:
    """The --store folder of the private agent among ``procs`` (its command line names it)."""
    for proc in procs:
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        if "device_agent.cli" in cmd and "--store" in cmd:
            return Path(cmd[cmd.index("--store") + 1])
    return None


def _alive(procs) -> list:
    """Those of ``procs`` still running (a zombie has exited; is_running() also checks the pid was not reused)."""
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def _leftovers(tmp: Path) -> list[str]:
    """What is in the search's temp folder, except two things of upstream libraries that are not the run's:
    torch's compile cache ``torchinductor_<user>`` (shared by every process, kept on purpose) and the
    modules PyG generates for each MessagePassing class it compiles (``torch_geometric.*.py``, written with
    ``NamedTemporaryFile(delete=False)`` in every process that uses the GNN, killed or not)."""
    return sorted(p.name for p in tmp.iterdir()
                  if not (p.name.startswith("torchinductor_") and p.is_dir())
                  and not (p.name.startswith("torch_geometric.") and p.suffix == ".py" and p.is_file()))


def test_sigkill_then_resume_does_not_reevaluate(tmp_path, trained_resnet20_mnist):
    """SIGKILL of the search process alone (no cleanup runs): its private agent and the agent's workers end,
    no temporary folder is left (the agent's store nor the candidates' artifacts), and a resume goes on
    without evaluating a finished candidate again."""
    run_dir = tmp_path / "killed"
    tmp = tmp_path / "tmp"  # the search's own temp folder: anything it leaves there is a leak of this run
    tmp.mkdir()
    budget = 2
    cmd = [sys.executable, "-m", "host.cli.main", "search", "--model", "resnet20", "--data", "mnist",
           "--checkpoint", str(trained_resnet20_mnist), "--device", "local", "--budget", str(budget),
           "--final-top", "0", "--out", str(run_dir), "--json", *TINY]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp)}
    # its own session, so the test can kill whatever is left (by process group) if the check below fails
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    children: dict[int, psutil.Process] = {}  # the agent and its runtime workers, seen while the search runs
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(psutil.NoSuchProcess):
                children.update({c.pid: c for c in psutil.Process(proc.pid).children(recursive=True)})
            if (run_dir / JOURNAL_NAME).is_file() and sum(r[1] == "search" for r in _rows(run_dir)) >= 1:
                break
            if proc.poll() is not None:
                pytest.fail(f"search exited early: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        else:
            pytest.fail("search did not record a candidate in time")
        children.update({c.pid: c for c in psutil.Process(proc.pid).children(recursive=True)})
        store = _agent_store(children.values())
        assert store is not None and store.is_dir(), [c.cmdline() for c in _alive(children.values())]
        assert len(children) >= 2  # the agent and at least its ExecuTorch worker (the dense model was measured)
        os.kill(proc.pid, signal.SIGKILL)  # the search process only: its children must go by themselves
        proc.wait(timeout=30)
        _gone, alive = psutil.wait_procs(_alive(children.values()), timeout=30)
        alive = _alive(alive)
        assert not alive, f"left running after the search was SIGKILLed: {[(p.pid, p.cmdline()) for p in alive]}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the session survived a failed check
        proc.wait(timeout=30)
    assert not store.exists(), f"the local agent's store {store} was left behind"
    assert _leftovers(tmp) == [], "temporary files of the killed search were left behind"
    before = _rows(run_dir)
    done_before = sum(r[1] == "search" for r in before)
    assert done_before >= 1 and sum(r[1] == "search" and r[4] == 0 for r in before) < budget
    with Journal.open(run_dir) as journal:
        first_seconds = journal.elapsed_seconds()  # saved with every row the killed process committed
    assert first_seconds >= before[-1][3] - before[0][3] > 0

    started = time.monotonic()
    resumed = subprocess.run([sys.executable, "-m", "host.cli.main", "search", "--resume", str(run_dir), "--json"],
                             env=env, capture_output=True, timeout=600)
    resumed_wall = time.monotonic() - started
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    # the candidates' working folder the killed process left in the run was cleared, then removed at the end
    assert not (run_dir / WORK_DIR_NAME).exists()
    assert _leftovers(tmp) == []
    result = json.loads(resumed.stdout)
    after = _rows(run_dir)
    assert after[: len(before)] == before  # rows written before the kill are untouched
    new = after[len(before):]
    # the budget counts evaluated candidates, including those done before the kill
    assert sum(r[1] == "search" and r[4] == 0 for r in after) == budget
    assert not any(r[1] == "dense" for r in new)  # the dense reference was not evaluated again
    old_hashes = {r[2] for r in before}
    # a plan evaluated before the kill is never evaluated again: at most reused (reused=1) rows
    assert all(r[4] == 1 for r in new if r[1] == "search" and r[2] in old_hashes)
    assert result["candidates_evaluated"] == budget
    # the run's seconds count the killed process too, not only the resumed one
    assert result["seconds"] >= first_seconds + (new[-1][3] - new[0][3])
    assert result["seconds"] <= first_seconds + resumed_wall


def test_two_devices_measured_and_combined_worst_case(tmp_path, trained_resnet20_mnist, agent_server):
    """--device local --device grpc://...: every measured candidate is timed on BOTH agents and its reward
    uses the worse of the two latency/target ratios."""
    from host.search.reward import constrained_reward
    from host.search.runner import SearchRunner

    devices = ("local", f"grpc://{agent_server}")
    # soft: a slope on both sides of the target, so the worst and the best device give different rewards
    config = tiny_config(tmp_path / "two", trained_resnet20_mnist, devices=devices, budget=2, final_top=0,
                         constraint="soft")
    result = SearchRunner.start(config).run()
    assert len(result.dense.latency_ms) == 2
    objective = config.reward_objective()
    with Journal.open(config.out) as journal:
        dense = journal.candidates("dense")[0]
        dense_ms = {dev: m.p50_ms for dev, m in dense.measurement.items()}
        assert len(dense_ms) == 2 and all(v > 0 for v in dense_ms.values())
        # the most aggressive plan ("floor") is always measured, to check that the target is reachable
        rows = journal.candidates("floor") + journal.candidates("search")
        measured = [r for r in rows if r.measurement and not r.reused]
        assert measured and measured[0].phase == "floor"
        for row in measured:
            ms = {dev: m.p50_ms for dev, m in row.measurement.items()}
            assert ms.keys() == dense_ms.keys()
            # each device's ratio is to dense measured there right after the candidate (paired)
            paired = {dev: m.dense_p50_ms for dev, m in row.measurement.items()}
            assert all(v > 0 for v in paired.values())
            worst = max(ms[d] / objective.target.resolve(paired[d]) for d in ms)
            best = min(ms[d] / objective.target.resolve(paired[d]) for d in ms)
            expected = objective.reward(row.accuracy, row.macs, dense.macs, measured=ms, dense_measured=paired)
            assert row.reward == pytest.approx(expected)
            assert row.reward == pytest.approx(constrained_reward(row.accuracy, worst, objective.constraint))
            if worst != best:  # the worst device, not the better one, sets the reward
                assert row.reward != pytest.approx(constrained_reward(row.accuracy, best, objective.constraint))

"""A fleet of three agents in network namespaces: one killed mid-run, one behind netem delay and loss.

Runs the real `sculpt-host fleet bench` CLI against grpcs:// agents (TLS + token) from a fleet file.
"""

from __future__ import annotations

import csv
import json
import subprocess
import threading
import time

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.needs_root, pytest.mark.litert, pytest.mark.slow]

ERROR_KINDS = {"transient", "failed", "fatal", "offline"}


@pytest.fixture(scope="module")
def tflite_models(tmp_path_factory):
    """Four small, different real .tflite models, so each device has several jobs."""
    from tests.fixtures.tflite_builder import conv_net

    d = tmp_path_factory.mktemp("fleet-models")
    paths = []
    for i, channels in enumerate([(3, 8, 16), (3, 16, 16), (3, 16, 32), (3, 24, 32)]):
        data, _ = conv_net(size=24, channels=channels)
        path = d / f"net{i}.tflite"
        path.write_bytes(data)
        paths.append(path)
    return paths


def _fleet_file(lab, path):
    lines = []
    for agent in lab.agents:
        lines += ["[[device]]", f'name = "{agent.name}"', f'address = "{agent.address}"',
                  f'tags = ["ns", "{agent.name}"]', f'token_file = "{lab.token_file}"', f'ca_cert = "{lab.ca_cert}"',
                  'runtime = "litert"', "threads = 1", ""]
    path.write_text("\n".join(lines))
    return path


def _read_jsonl(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_fleet_run_survives_a_dead_and_a_lossy_device(netns_lab, venv_bin, tmp_path, tflite_models):
    lab = netns_lab
    _, doomed, lossy = lab.add("steady"), lab.add("doomed"), lab.add("lossy")
    lab.wait_ready()
    impairment = lab.impair(lossy, delay_ms=40, loss_percent=5)
    print(f"lossy link: {impairment}")
    fleet = _fleet_file(lab, tmp_path / "fleet.toml")
    out = tmp_path / "out"
    cmd = [str(venv_bin / "sculpt-host"), "fleet", "bench", "--fleet", str(fleet), "--tags", "ns",
           *map(str, tflite_models), "--out", str(out), "--warmup", "2", "--runs", "20", "--seconds", "0.05",
           "--retries", "2", "--offline-after", "2", "--timeout", "10", "--json"]

    # Kill the doomed board right after its first result reaches disk.
    killed = threading.Event()

    def killer():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed.is_set():
            if any(r["device"] == "doomed" and r["status"] == "ok" for r in _read_jsonl(out / "results.jsonl")):
                lab.kill(doomed)
                killed.set()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=killer, daemon=True)
    watcher.start()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    watcher.join(timeout=5)
    assert killed.is_set(), f"the doomed device never produced a result: {proc.stderr[-3000:]}"
    assert proc.returncode == 1, proc.stderr[-3000:]  # some jobs failed, and the run still completed
    doc = json.loads(proc.stdout)
    results = doc["results"]

    # Every job ended with a result or a classified error.
    assert len(results) == 3 * len(tflite_models)
    for r in results:
        assert r["status"] in ("ok", "error"), r
        if r["status"] == "error":
            assert r["error_kind"] in ERROR_KINDS and r["error_type"] and r["message"], r
        else:
            assert r["p50_ms"] > 0 and r["runs"] >= 20 and r["runtime"] == "litert"
    by_device = {name: [r for r in results if r["device"] == name] for name in ("steady", "doomed", "lossy")}
    assert all(r["status"] == "ok" for r in by_device["steady"])
    assert all(r["status"] == "ok" for r in by_device["lossy"])  # slow and lossy, but TCP + retries cope
    doomed_ok = [r for r in by_device["doomed"] if r["status"] == "ok"]
    doomed_err = [r for r in by_device["doomed"] if r["status"] == "error"]
    assert len(doomed_ok) >= 1 and len(doomed_err) >= 1
    assert doomed_err[-1]["error_kind"] in ("offline", "transient")
    assert doc["summary"]["devices"]["doomed"]["error"] == len(doomed_err)

    # Nothing completed is lost: the journal, the CSV and the JSON all hold every ok result.
    journal_ok = {(r["device"], r["artifact"]) for r in _read_jsonl(out / "results.jsonl") if r["status"] == "ok"}
    assert journal_ok == {(r["device"], r["artifact"]) for r in results if r["status"] == "ok"}
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(results)
    assert (out / "latency.png").stat().st_size > 1000

    # A rerun resumes: successful jobs are not repeated; the dead device fails again, quickly classified.
    before = len(_read_jsonl(out / "results.jsonl"))
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1, again.stderr[-2000:]
    new = _read_jsonl(out / "results.jsonl")[before:]
    assert new and all(r["device"] == "doomed" and r["status"] == "error" for r in new)
    assert {(r["device"], r["artifact"]) for r in json.loads(again.stdout)["results"] if r["status"] == "ok"} == journal_ok


def test_unreachable_lab_device_is_classified_not_fatal(netns_lab, venv_bin, tmp_path, tflite_models):
    """A wrong token is an auth error (fatal, device offline at once); the other device still runs."""
    lab = netns_lab
    good, locked = lab.add("good"), lab.add("locked")
    lab.wait_ready()
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token\n")
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        f'[defaults]\nca_cert = "{lab.ca_cert}"\nruntime = "litert"\n\n'
        f'[[device]]\nname = "good"\naddress = "{good.address}"\ntoken_file = "{lab.token_file}"\n\n'
        f'[[device]]\nname = "locked"\naddress = "{locked.address}"\ntoken_file = "{wrong}"\n'
    )
    proc = subprocess.run(
        [str(venv_bin / "sculpt-host"), "fleet", "bench", "--fleet", str(fleet), *map(str, tflite_models[:2]),
         "--out", str(tmp_path / "out"), "--runs", "10", "--seconds", "0.02", "--json"],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    results = json.loads(proc.stdout)["results"]
    good_r = [r for r in results if r["device"] == "good"]
    locked_r = [r for r in results if r["device"] == "locked"]
    assert [r["status"] for r in good_r] == ["ok", "ok"]
    assert locked_r[0]["error_type"] == "DeviceAuthError" and locked_r[0]["error_kind"] == "fatal"
    assert locked_r[1]["error_kind"] == "offline"

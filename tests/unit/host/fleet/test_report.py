"""Fleet reports: CSV, JSON summary and the latency plot from job records."""

from __future__ import annotations

import csv
import json

from host.fleet.report import summary, write_reports
from host.fleet.runner import JobRecord, latest_records


def _ok(device, model, p50):
    return JobRecord(device=device, address=f"grpc://{device}:1", artifact=model, artifact_sha256=model * 4,
                     status="ok", p50_ms=p50, p90_ms=p50 * 1.2, mean_ms=p50, runs=50, cv=0.01)


def _err(device, model, kind):
    return JobRecord(device=device, address=f"grpc://{device}:1", artifact=model, artifact_sha256=model * 4,
                     status="error", error_kind=kind, error_type="DeviceUnreachableError", message="down")


def test_reports_hold_every_record(tmp_path):
    records = [_ok("pi-a", "m1.tflite", 2.0), _ok("pi-b", "m1.tflite", 2.5), _ok("pi-a", "m2.pte", 5.0),
               _err("pi-b", "m2.pte", "transient"), _err("pi-c", "m1.tflite", "offline")]
    paths = write_reports(records, tmp_path / "out")
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["device"] for r in rows] == ["pi-a", "pi-b", "pi-a", "pi-b", "pi-c"]
    assert float(rows[1]["p50_ms"]) == 2.5 and rows[3]["error_kind"] == "transient"
    doc = json.loads(paths["json"].read_text())
    assert doc["summary"]["ok"] == 3 and doc["summary"]["error"] == 2
    assert doc["summary"]["devices"]["pi-c"]["offline"] is True
    assert doc["summary"]["devices"]["pi-a"] == {"ok": 2, "error": 0, "skipped": 0, "offline": False}
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_plot_without_results(tmp_path):
    paths = write_reports([_err("x", "m", "fatal")], tmp_path)
    assert "plot" not in paths and summary([_err("x", "m", "fatal")])["error"] == 1


def test_latest_record_wins_per_job():
    first, retry = _err("a", "m", "transient"), _ok("a", "m", 1.0)
    assert latest_records([first, _ok("b", "m", 3.0), retry]) == [retry, _ok("b", "m", 3.0)]


def test_latencies_spanning_more_than_ten_times_get_a_log_axis():
    from host.fleet.report import log_scale

    assert log_scale([0.1, 2.0])
    assert not log_scale([0.5, 2.0])
    assert not log_scale([])


def test_artifact_precision_comes_from_the_exporters_sidecar(tmp_path):
    import json

    from host.fleet.runner import BenchArtifact, JobRecord

    model = tmp_path / "m-int8.pte"
    model.write_bytes(b"program bytes")
    assert BenchArtifact.from_path(model).precision is None  # no sidecar: unknown, not guessed
    sha = BenchArtifact.from_path(model).sha256
    sidecar = {"artifacts": {"m-int8.pte": {"sha256": sha, "int8": True}, "other.pte": {"sha256": "x", "int8": False}}}
    (tmp_path / "m-int8.json").write_text(json.dumps(sidecar))
    assert BenchArtifact.from_path(model).precision == "int8"
    model.write_bytes(b"rebuilt since")  # the sidecar describes another file now
    assert BenchArtifact.from_path(model).precision is None
    assert "precision" in JobRecord(device="d", address="a", artifact="m", artifact_sha256=sha, status="ok").to_json()

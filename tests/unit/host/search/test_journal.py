"""The SQLite journal: records survive reopening, the measurement cache dedups, bad files are refused."""

from __future__ import annotations

import json
import sqlite3

import pytest

import host.search.journal as journal_module
from host.errors import SearchError
from host.search.journal import JOURNAL_NAME, CandidatePlan, CandidateRecord, Journal, plan_hash
from host.search.measurement import MeasurementSummary
from patterns.plan import LayerAssignment, Plan


def _record(acc: float = 0.9, plan: CandidatePlan | None = None, phase: str = "search") -> CandidateRecord:
    return CandidateRecord(
        phase=phase,
        plan=plan or CandidatePlan(choices={"conv1": "keep"}),
        accuracy=acc,
        macs=1000,
        params=50,
        reward=acc * 0.9,
        eval_seconds=0.5,
        artifact_sha256="ab" * 32,
        measurement={"dev1": MeasurementSummary(p50_ms=1.5, p90_ms=1.8, count=40, dense_p50_ms=2.0)},
    )


def test_records_survive_reopen(tmp_path):
    with Journal.create(tmp_path, {"model": "resnet20", "seed": 3}) as journal:
        first = journal.record(_record(0.8))
        journal.record(_record(0.7, CandidatePlan(choices={"conv1": "drop"})))
        journal.set_value("dense", {"dev1": 2.0})
    assert first.id == 1
    with Journal.open(tmp_path) as journal:
        rows = journal.candidates()
        assert [r.accuracy for r in rows] == [0.8, 0.7]
        assert rows[0].measurement == {"dev1": MeasurementSummary(p50_ms=1.5, p90_ms=1.8, count=40, dense_p50_ms=2.0)}
        assert journal.metadata == {"model": "resnet20", "seed": 3}
        assert journal.get_value("dense") == {"dev1": 2.0}
        assert journal.find(plan_hash(CandidatePlan(choices={"conv1": "drop"}))).accuracy == 0.7
        assert journal.find("0" * 64) is None
        assert journal.count("search") == 2 and journal.count("final") == 0


def test_plan_hash_ignores_key_order():
    assert plan_hash(CandidatePlan(choices={"a": "keep", "b": "x"})) == plan_hash(CandidatePlan(choices={"b": "x", "a": "keep"}))
    assert plan_hash(CandidatePlan(choices={"a": "keep"})) != plan_hash(CandidatePlan(choices={"a": "x"}))


def test_candidate_plans_round_trip_with_their_layers_and_refuse_other_forms(tmp_path):
    plan = Plan.from_mapping({"conv1": LayerAssignment("kernel", "row1"), "fc": LayerAssignment("channel", "prune50")})
    chosen = CandidatePlan(plan, {"fc": "channel:prune50", "conv1": "kernel:row1", "conv2": "keep"})
    with Journal.create(tmp_path, {}) as journal:
        journal.record(_record(0.8, chosen))
    with Journal.open(tmp_path) as journal:
        (row,) = journal.candidates()
    assert row.plan == chosen and row.plan.plan.get("conv1") == LayerAssignment("kernel", "row1")
    assert row.plan_hash == plan_hash(chosen) and row.plan.choice("conv2") == "keep" and row.plan.choice(None) is None
    for bad in ({"layers": {}}, {"choices": {"a": 1}, "plan": {"layers": {}}}, {"choices": {}, "plan": {"x": 1}}, []):
        with pytest.raises(ValueError):
            CandidatePlan.from_json(bad)
    # a row whose plan cannot be read is a SearchError naming the row, not a KeyError halfway through a resume
    conn = sqlite3.connect(tmp_path / JOURNAL_NAME)
    conn.execute("UPDATE candidates SET plan_json = '{\"layers\": {}}'")
    conn.commit()
    conn.close()
    with Journal.open(tmp_path) as journal, pytest.raises(SearchError, match="candidate row 1"):
        journal.candidates()


def test_measurement_cache_keyed_by_artifact_and_device(tmp_path):
    journal = Journal.create(tmp_path, {})
    assert journal.cached_measurement("sha", "fp1") is None
    journal.store_measurement("sha", "fp1", MeasurementSummary(p50_ms=1.0, energy_mj=0.5, meter="ina219"))
    journal.store_measurement("sha", "fp1", MeasurementSummary(p50_ms=9.0))  # first one wins
    assert journal.cached_measurement("sha", "fp1") == MeasurementSummary(p50_ms=1.0, energy_mj=0.5, meter="ina219")
    assert journal.cached_measurement("sha", "fp2") is None
    assert journal.measurement_count() == 1


def test_measurements_written_before_the_typed_summary_read_back(tmp_path):
    """A journal row and a cache entry as earlier versions wrote them (plain JSON) read back as summaries; a
    measurement this version cannot read is a SearchError naming the row, not a KeyError mid-resume."""
    journal = Journal.create(tmp_path, {})
    old = ('{"dev1": {"count": 40, "cv": 0.02, "dense_p50_ms": 2.0, "energy_mj": null, "mean_ms": 1.52, '
           '"meter": null, "p50_ms": 1.5, "p90_ms": 1.8}}')
    journal.record(_record())
    journal._conn.execute("UPDATE candidates SET measurement_json=?", (old,))
    journal._conn.execute("INSERT INTO measurements VALUES ('sha', 'fp', ?, 0)",
                          ('{"p50_ms": 1.0, "energy_mj": 0.4, "energy_total_mj": 0.9, "idle_power_w": 2.5, '
                           '"meter": "ina219", "rounds": 3}',))
    summary = journal.candidates()[0].measurement["dev1"]
    assert (summary.p50_ms, summary.cv, summary.count, summary.dense_p50_ms) == (1.5, 0.02, 40, 2.0)
    assert summary.to_json() == {"count": 40, "cv": 0.02, "dense_p50_ms": 2.0, "energy_mj": None, "mean_ms": 1.52,
                                 "meter": None, "p50_ms": 1.5, "p90_ms": 1.8}  # the same JSON when written again
    cached = journal.cached_measurement("sha", "fp")
    assert (cached.energy_mj, cached.idle_power_w, cached.rounds) == (0.4, 2.5, 3)
    journal._conn.execute("UPDATE candidates SET measurement_json='{\"dev1\": {\"latency\": 1.5}}'")
    with pytest.raises(SearchError, match="candidate row 1.*unknown field.*latency"):
        journal.candidates()
    journal.close()


def test_create_refuses_existing_run(tmp_path):
    Journal.create(tmp_path, {}).close()
    with pytest.raises(SearchError, match="--resume"):
        Journal.create(tmp_path, {})


def test_open_missing_corrupt_and_foreign(tmp_path):
    with pytest.raises(SearchError, match="no search journal"):
        Journal.open(tmp_path / "nothing")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / JOURNAL_NAME).write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(SearchError, match="not a readable search journal"):
        Journal.open(corrupt)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    conn = sqlite3.connect(foreign / JOURNAL_NAME)
    conn.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    conn.execute("CREATE TABLE candidates (x)")
    conn.execute("CREATE TABLE measurements (x)")
    conn.commit()
    conn.close()
    with pytest.raises(SearchError, match="not an AutoSculpt search journal"):
        Journal.open(foreign)


def test_reused_rows_are_counted_but_never_found_as_originals(tmp_path):
    journal = Journal.create(tmp_path, {})
    original = journal.record(_record(0.8))
    journal.record(CandidateRecord(**{**_record(0.8).__dict__, "reused": True, "eval_seconds": 0.0}))
    assert journal.count("search") == 2
    assert journal.count("search", evaluated_only=True) == 1
    assert journal.find(original.plan_hash).id == original.id
    assert [r.reused for r in journal.candidates()] == [False, True]


def test_invalid_candidates_keep_status_reason_and_layer(tmp_path):
    with Journal.create(tmp_path, {}) as journal:
        journal.record(_record(0.8))
        journal.record(CandidateRecord(
            phase="search", plan=CandidatePlan(choices={"conv1": "channel:prune50"}), accuracy=0.0, macs=1000, params=50,
            reward=-1.0, eval_seconds=0.1, status="invalid", reason="realize failed: shape '[1, 2, 3]' is invalid",
            failed_layer="conv1"))
        with pytest.raises(ValueError, match="status"):
            journal.record(CandidateRecord(**{**_record().__dict__, "status": "broken"}))
    with Journal.open(tmp_path) as journal:
        ok, bad = journal.candidates()
        assert ok.valid and ok.status == "ok" and ok.reason is None
        assert not bad.valid and bad.failed_layer == "conv1" and "is invalid" in bad.reason
        assert journal.find(bad.plan_hash).status == "invalid"


def test_schema_1_journal_is_upgraded_and_its_rows_stay_valid(tmp_path):
    """A run started before candidates had a status resumes: its rows read as valid."""
    conn = sqlite3.connect(tmp_path / JOURNAL_NAME)
    conn.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE candidates (id INTEGER PRIMARY KEY AUTOINCREMENT, phase TEXT NOT NULL, plan_hash TEXT NOT NULL,
            plan_json TEXT NOT NULL, accuracy REAL NOT NULL, macs INTEGER NOT NULL, params INTEGER NOT NULL,
            artifact_sha256 TEXT, measurement_json TEXT, reward REAL NOT NULL, eval_seconds REAL NOT NULL,
            reused INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
        CREATE TABLE measurements (artifact_sha256 TEXT NOT NULL, device_fingerprint TEXT NOT NULL,
            measurement_json TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (artifact_sha256, device_fingerprint));
        INSERT INTO meta VALUES ('schema', 'autosculpt-search-journal'), ('schema_version', '1'), ('metadata', '{}');
        INSERT INTO candidates (phase, plan_hash, plan_json, accuracy, macs, params, reward, eval_seconds, created)
            VALUES ('search', 'h', '{"choices": {}, "plan": {"layers": {}, "model": null, "schema_version": 1}}',
                    0.9, 10, 5, 0.8, 1.0, 0.0);
    """)
    conn.commit()
    conn.close()
    with Journal.open(tmp_path) as journal:
        (row,) = journal.candidates()
        assert row.valid and row.accuracy == 0.9
        journal.record(CandidateRecord(**{**_record().__dict__, "status": "invalid", "reason": "x"}))
    with Journal.open(tmp_path) as journal:
        assert [r.status for r in journal.candidates()] == ["ok", "invalid"]


def test_int8_accuracy_round_trips_and_schema_2_journals_gain_the_column(tmp_path):
    with Journal.create(tmp_path, {}) as journal:
        journal.record(CandidateRecord(**{**_record(0.9).__dict__, "int8_accuracy": 0.88}))
        journal.record(_record(0.7))
    with Journal.open(tmp_path) as journal:
        quantized, plain = journal.candidates()
        assert quantized.int8_accuracy == pytest.approx(0.88) and quantized.deployed_accuracy == pytest.approx(0.88)
        assert plain.int8_accuracy is None and plain.deployed_accuracy == pytest.approx(0.7)
    # a schema-2 journal (no int8_accuracy column) opens, its rows read as not quantized
    other = tmp_path / "old"
    other.mkdir()
    conn = sqlite3.connect(other / JOURNAL_NAME)
    schema2 = journal_module._SCHEMA.replace(",\n    int8_accuracy REAL,\n    stage_seconds TEXT,\n    features TEXT", "")
    assert "int8_accuracy" not in schema2 and "stage_seconds" not in schema2 and "features" not in schema2
    conn.executescript(schema2)
    conn.execute("INSERT INTO meta VALUES ('schema', 'autosculpt-search-journal'), ('schema_version', '2'), "
                 "('metadata', '{}')")
    conn.execute("INSERT INTO candidates (phase, plan_hash, plan_json, accuracy, macs, params, reward, eval_seconds, "
                 "created) VALUES ('search', 'h', ?, 0.9, 10, 5, 0.8, 1.0, 0.0)",
                 (json.dumps(CandidatePlan().to_json()),))
    conn.commit()
    conn.close()
    with Journal.open(other) as journal:
        (row,) = journal.candidates()
        assert row.int8_accuracy is None and row.deployed_accuracy == 0.9
        assert row.stage_seconds is None  # schema 4 records where the time went; older rows did not
        assert row.features is None  # schema 5 keeps the realized plan's operator features


def test_stage_seconds_round_trip(tmp_path):
    with Journal.create(tmp_path, {}) as journal:
        journal.record(CandidateRecord(**{**_record(0.9).__dict__,
                                          "stage_seconds": {"score": 2.5, "export": 1.25, "measure": 0.8}}))
    with Journal.open(tmp_path) as journal:
        (row,) = journal.candidates()
        assert row.stage_seconds == {"score": 2.5, "export": 1.25, "measure": 0.8}


def test_features_round_trip(tmp_path):
    with Journal.create(tmp_path, {}) as journal:
        journal.record(CandidateRecord(**{**_record(0.9).__dict__, "features": (1.0, 0.25, 3.0)}))
    with Journal.open(tmp_path) as journal:
        (row,) = journal.candidates()
        assert row.features == (1.0, 0.25, 3.0)


def test_elapsed_time_adds_up_over_processes_and_reading_adds_nothing(tmp_path, monkeypatch):
    import host.search.journal as journal_module

    now = [100.0]
    monkeypatch.setattr(journal_module, "monotonic", lambda: now[0])
    with Journal.create(tmp_path, {}) as journal:  # the first process: 30 s, then killed after a commit
        journal.start_clock()
        now[0] += 30.0
        journal.record(_record(0.8))
        journal._conn.close()  # like SIGKILL: no close(), only what was committed survives
        journal._clock = None
    now[0] += 500.0  # time between the kill and the resume does not count
    with Journal.open(tmp_path) as journal:  # reading the run (e.g. a report tool) adds no time
        assert journal.elapsed_seconds() == pytest.approx(30.0)
        now[0] += 7.0
    with Journal.open(tmp_path) as journal:  # the resumed process works 12 s
        journal.start_clock()
        now[0] += 12.0
        assert journal.elapsed_seconds() == pytest.approx(42.0)
    with Journal.open(tmp_path) as journal:
        assert journal.elapsed_seconds() == pytest.approx(42.0)

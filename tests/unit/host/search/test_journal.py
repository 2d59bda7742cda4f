"""The SQLite journal: records survive reopening, the measurement cache dedups, bad files are refused."""

from __future__ import annotations

import sqlite3

import pytest

from host.errors import SearchError
from host.search.journal import JOURNAL_NAME, CandidateRecord, Journal, plan_hash


def _record(acc: float = 0.9, plan: dict | None = None, phase: str = "search") -> CandidateRecord:
    return CandidateRecord(
        phase=phase,
        plan=plan or {"layers": {"conv1": "keep"}},
        accuracy=acc,
        macs=1000,
        params=50,
        reward=acc * 0.9,
        eval_seconds=0.5,
        artifact_sha256="ab" * 32,
        measurement={"dev1": {"p50_ms": 1.5}},
    )


def test_records_survive_reopen(tmp_path):
    with Journal.create(tmp_path, {"model": "resnet20", "seed": 3}) as journal:
        first = journal.record(_record(0.8))
        journal.record(_record(0.7, {"layers": {"conv1": "drop"}}))
        journal.set_value("dense", {"dev1": 2.0})
    assert first.id == 1
    with Journal.open(tmp_path) as journal:
        rows = journal.candidates()
        assert [r.accuracy for r in rows] == [0.8, 0.7]
        assert rows[0].measurement == {"dev1": {"p50_ms": 1.5}}
        assert journal.metadata == {"model": "resnet20", "seed": 3}
        assert journal.get_value("dense") == {"dev1": 2.0}
        assert journal.find(plan_hash({"layers": {"conv1": "drop"}})).accuracy == 0.7
        assert journal.find("0" * 64) is None
        assert journal.count("search") == 2 and journal.count("final") == 0


def test_plan_hash_ignores_key_order():
    assert plan_hash({"a": 1, "b": [1, 2]}) == plan_hash({"b": [1, 2], "a": 1})
    assert plan_hash({"a": 1}) != plan_hash({"a": 2})


def test_measurement_cache_keyed_by_artifact_and_device(tmp_path):
    journal = Journal.create(tmp_path, {})
    assert journal.cached_measurement("sha", "fp1") is None
    journal.store_measurement("sha", "fp1", {"p50_ms": 1.0})
    journal.store_measurement("sha", "fp1", {"p50_ms": 9.0})  # first one wins
    assert journal.cached_measurement("sha", "fp1") == {"p50_ms": 1.0}
    assert journal.cached_measurement("sha", "fp2") is None
    assert journal.measurement_count() == 1


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

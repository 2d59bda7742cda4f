"""The search journal: one SQLite file per run directory.

Every evaluated candidate is written as soon as it completes, so a search killed at any moment (Ctrl-C,
SIGKILL, power loss) can be resumed without evaluating again what already finished. The same file holds the
run metadata (config, model, dataset, seed, library versions) and the measurement cache keyed by
(artifact sha256, device fingerprint): an artifact that was already measured on a device is never measured
twice, even across plans that realize to the same program.

WAL mode keeps each commit cheap and makes a half-written transaction disappear on the next open instead of
corrupting the file.

A candidate that could not be built (a plan the pattern library refuses, a realization or export that fails)
is a row too, with ``status = "invalid"``, the reason and, where it could be told, the layer responsible: the
policy learns from it, the report lists it, and a resume does not try it again.

The journal also keeps the run's working time (:meth:`Journal.start_clock`): ``result.json`` reports the
total over every process that worked on the run, not only the last one after a resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from time import monotonic
from types import MappingProxyType
from typing import Any

from host.errors import SearchError
from host.search.measurement import (
    Measurements,
    MeasurementSummary,
    measurements_from_json,
    measurements_to_json,
)
from patterns.errors import SculptError
from patterns.plan import Plan

logger = logging.getLogger(__name__)

JOURNAL_NAME = "journal.sqlite"
SCHEMA_NAME = "autosculpt-search-journal"
SCHEMA_VERSION = 5
# schema 1 had no status/reason/failed_layer columns; its rows are all valid candidates, so opening such a
# journal adds the columns with those defaults (a pre-upgrade run stays resumable). Schema 2 had no
# int8_accuracy column: its runs were all fp32 searches (NULL: not quantized). Schema 3 had no stage_seconds
# (NULL: where the candidate's time went was not recorded). Schema 4 had no features (NULL: the realized
# plan's operator features were not kept; an unmeasured row's reward then comes from the cost model).
_MIGRATIONS = {
    1: ("ALTER TABLE candidates ADD COLUMN status TEXT NOT NULL DEFAULT 'ok'",
        "ALTER TABLE candidates ADD COLUMN reason TEXT",
        "ALTER TABLE candidates ADD COLUMN failed_layer TEXT"),
    2: ("ALTER TABLE candidates ADD COLUMN int8_accuracy REAL",),
    3: ("ALTER TABLE candidates ADD COLUMN stage_seconds TEXT",),
    4: ("ALTER TABLE candidates ADD COLUMN features TEXT",),
}
STATUS_OK = "ok"
STATUS_INVALID = "invalid"
ELAPSED_KEY = "elapsed_seconds"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    phase TEXT NOT NULL,
    plan_hash TEXT NOT NULL,
    plan_json TEXT NOT NULL,
    accuracy REAL NOT NULL,
    macs INTEGER NOT NULL,
    params INTEGER NOT NULL,
    artifact_sha256 TEXT,
    measurement_json TEXT,
    reward REAL NOT NULL,
    eval_seconds REAL NOT NULL,
    reused INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'ok',
    reason TEXT,
    failed_layer TEXT,
    int8_accuracy REAL,
    stage_seconds TEXT,
    features TEXT
);
CREATE INDEX IF NOT EXISTS candidates_plan ON candidates (plan_hash, phase);
CREATE TABLE IF NOT EXISTS measurements (
    artifact_sha256 TEXT NOT NULL,
    device_fingerprint TEXT NOT NULL,
    measurement_json TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (artifact_sha256, device_fingerprint)
);
"""


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal data always hashes equally."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def plan_hash(plan: CandidatePlan) -> str:
    """SHA-256 of a candidate plan's canonical JSON; the key that says two candidates are the same."""
    return hashlib.sha256(canonical_json(plan.to_json()).encode()).hexdigest()


@dataclass(frozen=True)
class CandidatePlan:
    """A candidate's plan as the search chose it: the realizable :class:`~patterns.plan.Plan` and, for
    every layer of the search space, the name of the choice it got (``keep`` included), which is what the
    report, the policy's credit and invalid-plan reasons speak of.

    Its JSON (``{"choices": {...}, "plan": {...}}``) is what the journal stores and hashes; it is the one
    place that form is written or read.
    """

    plan: Plan = Plan()
    choices: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", MappingProxyType(dict(self.choices)))

    def __reduce__(self) -> tuple[type[CandidatePlan], tuple[Plan, dict[str, str]]]:
        return CandidatePlan, (self.plan, dict(self.choices))  # a read-only view does not pickle; its dict does

    def choice(self, layer: str | None) -> str | None:
        """The choice name of ``layer`` (None for no layer or one outside the space)."""
        return None if layer is None else self.choices.get(layer)

    def to_json(self) -> dict[str, Any]:
        return {"choices": dict(self.choices), "plan": json.loads(self.plan.to_json(indent=None))}

    @classmethod
    def from_json(cls, data: Any) -> CandidatePlan:
        """The plan of a journal row; ValueError when the stored form is not one."""
        if not isinstance(data, Mapping) or set(data) != {"choices", "plan"}:
            keys = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"a candidate plan is an object with 'choices' and 'plan', got {keys}")
        choices = data["choices"]
        if not isinstance(choices, Mapping) or not all(isinstance(v, str) for v in choices.values()):
            raise ValueError("a candidate plan's 'choices' maps layer names to choice names")
        try:
            plan = Plan.from_json(json.dumps(data["plan"]))
        except SculptError as exc:
            raise ValueError(f"its plan cannot be read: {exc}") from exc
        return cls(plan, {str(k): v for k, v in choices.items()})


@dataclass(frozen=True)
class CandidateRecord:
    """One evaluated candidate as stored in the journal."""

    phase: str  # a host.kinds.Phase (stored as its text)
    plan: CandidatePlan
    accuracy: float
    macs: int
    params: int
    reward: float
    eval_seconds: float
    artifact_sha256: str | None = None
    measurement: Measurements | None = None  # {device name: summary}; None = not measured
    reused: bool = False  # the plan was already evaluated; this step took its result from the journal
    id: int | None = None
    created: float | None = None
    status: str = STATUS_OK  # "ok" or "invalid" (the plan could not be masked, realized or exported)
    reason: str | None = None  # why an invalid candidate failed, as the user should read it
    failed_layer: str | None = None  # the layer whose choice made it fail, when that could be told
    # int8 searches: validation accuracy of the candidate's int8 artifact, run by the real runtime (None: not
    # quantized). ``accuracy`` stays the fp32 (masked model's) accuracy either way.
    int8_accuracy: float | None = None
    # where the candidate's time went: "score" (masks, recovery, accuracy, MACs; on a worker with --ray),
    # "export" and "measure" (the device(s), its dense pairs and confirmations) when it was measured
    stage_seconds: dict[str, float] | None = None
    # the realized plan's operator features (host.search.devicemodel.FEATURES), from which the device latency
    # model predicts an unmeasured candidate's latency; None where they were not read
    features: tuple[float, ...] | None = None

    @property
    def plan_hash(self) -> str:
        return plan_hash(self.plan)

    @property
    def valid(self) -> bool:
        """False for a plan that could not be built; such a row has no accuracy, cost or measurement."""
        return self.status == STATUS_OK

    @property
    def deployed_accuracy(self) -> float:
        """The accuracy of what would be deployed: the int8 artifact's when it was quantized, else fp32."""
        return self.accuracy if self.int8_accuracy is None else self.int8_accuracy


class Journal:
    """SQLite journal of one search run. Use :meth:`create` for a new run and :meth:`open` to resume."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._clock: tuple[float, float] | None = None  # (elapsed stored before this process, monotonic start)

    # -- opening -------------------------------------------------------------------------------------
    @classmethod
    def create(cls, run_dir: Path, metadata: Mapping[str, Any]) -> Journal:
        """Start a new journal in ``run_dir``; refuses to overwrite an existing one."""
        run_dir = Path(run_dir)
        path = run_dir / JOURNAL_NAME
        if path.exists():
            raise SearchError(
                f"{run_dir} already holds a search journal",
                hint=f"continue it with --resume {run_dir}, or choose another --out directory",
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        # built under another name and renamed into place: a reader (a watcher, a second command) never sees
        # a journal.sqlite without its tables, which SQLite would otherwise show between connect and schema
        staging = path.with_name(path.name + ".creating")
        staging.unlink(missing_ok=True)
        conn = sqlite3.connect(str(staging))
        try:
            with conn:
                conn.executescript(_SCHEMA)
                conn.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_NAME,))
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                conn.execute("INSERT INTO meta VALUES ('metadata', ?)", (canonical_json(dict(metadata)),))
                conn.execute("INSERT INTO meta VALUES ('created', ?)", (repr(time.time()),))
        finally:
            conn.close()
        os.replace(staging, path)
        logger.info("created search journal %s", path)
        return cls(path, cls._connect(path))

    @classmethod
    def open(cls, run_dir: Path) -> Journal:
        """Open the journal of an earlier run; raises SearchError if it is missing, corrupt or foreign."""
        run_dir = Path(run_dir)
        path = run_dir / JOURNAL_NAME
        if not path.is_file():
            raise SearchError(
                f"no search journal in {run_dir} (expected {JOURNAL_NAME})",
                hint="pass the --out directory of an earlier `sculpt-host search` run to --resume",
            )
        try:
            conn = cls._connect(path)
            rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            conn.execute("SELECT count(*) FROM candidates").fetchone()
            conn.execute("SELECT count(*) FROM measurements").fetchone()
        except sqlite3.DatabaseError as exc:
            raise SearchError(
                f"{path} is not a readable search journal ({exc})",
                hint="the file is corrupt or belongs to another program; start a new run with another --out",
            ) from exc
        if rows.get("schema") != SCHEMA_NAME:
            raise SearchError(
                f"{path} is an SQLite file but not an AutoSculpt search journal",
                hint="start a new run with another --out directory",
            )
        version = rows.get("schema_version")
        if version is not None and version.isdigit() and int(version) in _MIGRATIONS:
            with conn:
                for v in range(int(version), SCHEMA_VERSION):
                    for sql in _MIGRATIONS[v]:
                        conn.execute(sql)
                conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
            logger.info("upgraded %s from journal schema %s to %d", path, version, SCHEMA_VERSION)
        elif version != str(SCHEMA_VERSION):
            raise SearchError(
                f"{path} uses journal schema {rows.get('schema_version')}, this version reads {SCHEMA_VERSION}",
                hint="resume it with the AutoSculpt version that created it, or start a new run",
            )
        return cls(path, conn)

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(str(path), timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL makes every committed candidate survive a SIGKILL or power loss, which is the point of the file.
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def close(self) -> None:
        if self._clock is not None:
            self._save_elapsed()
            self._clock = None
        self._conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- metadata ------------------------------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, Any]:
        row = self._conn.execute("SELECT value FROM meta WHERE key='metadata'").fetchone()
        return json.loads(row[0]) if row else {}

    def set_value(self, key: str, value: Any) -> None:
        """Store a small JSON-able value (e.g. the dense reference measurement) under ``key``."""
        if key in {"schema", "schema_version", "metadata", "created"}:
            raise ValueError(f"meta key {key!r} is reserved")
        with self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"value:{key}", canonical_json(value))
            )

    def get_value(self, key: str, default: Any = None) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (f"value:{key}",)).fetchone()
        return json.loads(row[0]) if row else default

    # -- working time --------------------------------------------------------------------------------
    def start_clock(self) -> None:
        """Count this process's working time into the run's total from now on.

        The total is saved with every recorded candidate and on close, so a process that is killed
        still contributes the time up to its last committed candidate (the work after it is lost anyway
        and is done again by the resumed process, which counts it then). Only the process that works on
        the run starts the clock: opening a journal to read it adds nothing.
        """
        if self._clock is None:
            self._clock = (float(self.get_value(ELAPSED_KEY, 0.0)), monotonic())

    def elapsed_seconds(self) -> float:
        """Working time of the run so far, summed over every process that started the clock."""
        if self._clock is None:
            return float(self.get_value(ELAPSED_KEY, 0.0))
        before, start = self._clock
        return before + (monotonic() - start)

    def _save_elapsed(self) -> None:
        with self._conn:
            self._elapsed_row()

    def _elapsed_row(self) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                           (f"value:{ELAPSED_KEY}", canonical_json(self.elapsed_seconds())))

    # -- candidates ----------------------------------------------------------------------------------
    def record(self, candidate: CandidateRecord) -> CandidateRecord:
        """Write one evaluated candidate and commit at once; returns it with its id and time."""
        if candidate.status not in (STATUS_OK, STATUS_INVALID):
            raise ValueError(f"unknown candidate status {candidate.status!r}")
        created = time.time() if candidate.created is None else candidate.created
        with self._conn:
            if self._clock is not None:
                self._elapsed_row()  # same transaction: the time is never behind the rows it covers
            cur = self._conn.execute(
                f"INSERT INTO candidates ({', '.join(_COLUMNS[1:])}) VALUES ({','.join('?' * (len(_COLUMNS) - 1))})",
                (
                    candidate.phase,
                    candidate.plan_hash,
                    canonical_json(candidate.plan.to_json()),
                    float(candidate.accuracy),
                    int(candidate.macs),
                    int(candidate.params),
                    candidate.artifact_sha256,
                    None if candidate.measurement is None else canonical_json(measurements_to_json(candidate.measurement)),
                    float(candidate.reward),
                    float(candidate.eval_seconds),
                    int(candidate.reused),
                    created,
                    candidate.status,
                    candidate.reason,
                    candidate.failed_layer,
                    None if candidate.int8_accuracy is None else float(candidate.int8_accuracy),
                    None if candidate.stage_seconds is None else canonical_json(
                        {k: round(float(v), 4) for k, v in candidate.stage_seconds.items()}),
                    None if candidate.features is None else json.dumps([float(v) for v in candidate.features]),
                ),
            )
        return replace(candidate, id=cur.lastrowid, created=created)

    def candidates(self, phase: str | None = None) -> list[CandidateRecord]:
        """All recorded candidates in evaluation order, optionally of one phase."""
        return list(self._iter(phase))

    def find(self, plan_hash_: str, phase: str | None = None) -> CandidateRecord | None:
        """The first recorded candidate with this plan hash (and phase), or None."""
        sql = f"SELECT {_SELECT} FROM candidates WHERE plan_hash=?"
        args: tuple[Any, ...] = (plan_hash_,)
        if phase is not None:
            sql += " AND phase=?"
            args += (phase,)
        row = self._conn.execute(sql + " AND reused=0 ORDER BY id LIMIT 1", args).fetchone()
        return None if row is None else self._read(row)

    def count(self, phase: str | None = None, *, evaluated_only: bool = False) -> int:
        """Rows (of one phase); ``evaluated_only`` leaves out steps that reused an earlier result."""
        sql = "SELECT count(*) FROM candidates WHERE 1=1"
        args: tuple[Any, ...] = ()
        if phase is not None:
            sql += " AND phase=?"
            args += (phase,)
        if evaluated_only:
            sql += " AND reused=0"
        return self._conn.execute(sql, args).fetchone()[0]

    def _iter(self, phase: str | None) -> Iterator[CandidateRecord]:
        if phase is None:
            cur = self._conn.execute(f"SELECT {_SELECT} FROM candidates ORDER BY id")
        else:
            cur = self._conn.execute(f"SELECT {_SELECT} FROM candidates WHERE phase=? ORDER BY id", (phase,))
        for row in cur:
            yield self._read(row)

    def _read(self, row: tuple[Any, ...]) -> CandidateRecord:
        try:
            return _row_to_record(row)
        except ValueError as exc:  # a malformed plan or measurement (json.JSONDecodeError is a ValueError)
            raise self._unreadable(f"candidate row {row[0]}", exc) from exc

    # -- measurement cache ---------------------------------------------------------------------------
    def cached_measurement(self, artifact_sha256: str, device_fingerprint: str) -> MeasurementSummary | None:
        """The stored measurement of this artifact on this device, or None if it was never measured."""
        row = self._conn.execute(
            "SELECT measurement_json FROM measurements WHERE artifact_sha256=? AND device_fingerprint=?",
            (artifact_sha256, device_fingerprint),
        ).fetchone()
        if row is None:
            return None
        try:
            return MeasurementSummary.from_json(json.loads(row[0]))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise self._unreadable(f"the cached measurement of artifact {artifact_sha256[:12]}", exc) from exc

    def store_measurement(self, artifact_sha256: str, device_fingerprint: str, measurement: MeasurementSummary) -> None:
        """Cache a measurement; storing the same key twice keeps the first one."""
        with self._conn:
            self._conn.execute(
                "INSERT OR IGNORE INTO measurements VALUES (?, ?, ?, ?)",
                (artifact_sha256, device_fingerprint, canonical_json(measurement.to_json()), time.time()),
            )

    def _unreadable(self, what: str, exc: BaseException) -> SearchError:
        return SearchError(f"{self.path}: {what} cannot be read: {exc}",
                           hint="the journal was written by another AutoSculpt version or edited by hand; "
                                "start a new run with another --out")

    def measurement_count(self) -> int:
        return self._conn.execute("SELECT count(*) FROM measurements").fetchone()[0]


_COLUMNS = ("id", "phase", "plan_hash", "plan_json", "accuracy", "macs", "params", "artifact_sha256",
            "measurement_json", "reward", "eval_seconds", "reused", "created", "status", "reason", "failed_layer",
            "int8_accuracy", "stage_seconds", "features")
# named columns, not *: rows unpack by position, so the order must be this module's, not the file's
_SELECT = ", ".join(_COLUMNS)


def _row_to_record(row: tuple[Any, ...]) -> CandidateRecord:
    (id_, phase, _hash, plan_json, acc, macs, params, sha, meas_json, reward, secs, reused, created, status, reason,
     failed_layer, int8_acc, stages, features) = row
    return CandidateRecord(
        phase=phase,
        plan=CandidatePlan.from_json(json.loads(plan_json)),
        accuracy=acc,
        macs=macs,
        params=params,
        reward=reward,
        eval_seconds=secs,
        reused=bool(reused),
        artifact_sha256=sha,
        measurement=None if meas_json is None else measurements_from_json(json.loads(meas_json)),
        id=id_,
        created=created,
        status=status,
        reason=reason,
        failed_layer=failed_layer,
        int8_accuracy=int8_acc,
        stage_seconds=None if stages is None else json.loads(stages),
        features=None if features is None else tuple(float(v) for v in json.loads(features)),
    )


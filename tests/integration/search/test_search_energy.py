"""The energy objective end to end: a real search against a real in-process agent whose RAPL meter is a
sysfs tree this test writes, with a counter that follows REAL CPU activity.

This machine has no power meter, so the test plays the hardware: a thread advances the RAPL ``energy_uj``
counter by ``IDLE_W * elapsed + BUSY_W * cpu_seconds``, where ``cpu_seconds`` is the CPU time the kernel
accounted to this process and its descendants (the agent's benchmark workers) in ``/proc/<pid>/stat``.
A model that does more work burns more CPU time per inference and so more idle-subtracted energy; no
per-model figure is written anywhere. The process tree rather than the system-wide ``/proc/stat`` is
metered because the machine is shared: other test runs would otherwise show up as "energy" of our models.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from host.search.journal import JOURNAL_NAME, Journal
from tests.integration.search.conftest import tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.executorch, pytest.mark.slow, pytest.mark.timeout(600)]

IDLE_W = 2.0  # board power with nothing running
BUSY_W = 6.0  # extra power per fully busy CPU
MAX_RANGE_UJ = 2**32  # like a real package zone: the counter wraps
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (None once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


class CpuPoweredRapl:
    """A RAPL package zone under ``root`` whose counter a thread drives from this process tree's CPU time."""

    def __init__(self, root: Path, interval_s: float = 0.005) -> None:
        self.zone = root / "sys/class/powercap/intel-rapl:0"
        self.zone.mkdir(parents=True)
        (self.zone / "name").write_text("package-0\n")
        (self.zone / "max_energy_range_uj").write_text(f"{MAX_RANGE_UJ}\n")
        self.interval_s = interval_s
        self._seen: dict[int, float] = {}  # pid -> last CPU seconds; kept after exit so energy never goes back
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._write()
        self._thread = threading.Thread(target=self._loop, name="rapl-driver", daemon=True)

    def tree_cpu_seconds(self) -> float:
        """CPU seconds of this process and every descendant seen so far."""
        pending = [os.getpid()]
        while pending:
            pid = pending.pop()
            seconds = _cpu_seconds(pid)
            if seconds is not None:
                self._seen[pid] = max(seconds, self._seen.get(pid, 0.0))
                pending += _children(pid)
        return sum(self._seen.values())

    def _write(self) -> None:
        joules = IDLE_W * (time.monotonic() - self._start) + BUSY_W * self.tree_cpu_seconds()
        tmp = self.zone / "energy_uj.tmp"
        tmp.write_text(f"{int(joules * 1e6) % MAX_RANGE_UJ}\n")
        os.replace(tmp, self.zone / "energy_uj")  # the agent never reads half a number

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._write()

    def __enter__(self) -> CpuPoweredRapl:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def _agent(tmp_path: Path, energy_root: Path) -> Iterator[str]:
    """A real in-process gRPC agent on loopback whose energy meter is RAPL under ``energy_root``."""
    from device_agent.config import AgentConfig, EnergyConfig
    from device_agent.server import create_server, stop_server

    energy = EnergyConfig(meter="rapl", root=energy_root, sample_interval_s=0.02, idle_seconds=0.25)
    server, port = create_server(AgentConfig(host="127.0.0.1", port=0, store_dir=tmp_path / "store", energy=energy,
                                             default_timeout_s=120.0))
    server.start()
    try:
        yield f"grpc://127.0.0.1:{port}"
    finally:
        stop_server(server, grace=1.0)


@pytest.fixture(scope="module")
def metered_agent(tmp_path_factory) -> Iterator[str]:
    """Address of an agent with a CPU-driven RAPL meter."""
    tmp = tmp_path_factory.mktemp("metered")
    with CpuPoweredRapl(tmp / "sysfs"), _agent(tmp, tmp / "sysfs") as address:
        yield address


def _energy_config(out, checkpoint, device, **changes):
    base = tiny_config(out, checkpoint, objective="energy", target="0.7x", devices=(device,), budget=3)
    # a longer timed window than the latency tests: the meter integrates CPU time counted in 10 ms ticks
    evaluation = replace(base.evaluation, min_time_s=0.15)
    return replace(base, evaluation=evaluation, **changes)


@pytest.fixture(scope="module")
def energy_search(tmp_path_factory, trained_resnet20_mnist, metered_agent):
    """(config, result) of one finished tiny energy search."""
    from host.search.runner import SearchRunner

    config = _energy_config(tmp_path_factory.mktemp("energy") / "run", trained_resnet20_mnist, metered_agent)
    return config, SearchRunner.start(config).run()


def _energy(measurement) -> dict[str, float]:
    return {dev: m["energy_mj"] for dev, m in measurement.items()}


def test_energy_search_measures_and_rewards_energy(energy_search):
    from host.search.reward import constrained_reward

    config, result = energy_search
    objective = config.reward_objective()
    assert result["objective"] == "energy" and result["target"] == "0.7x"
    with Journal.open(config.out) as journal:
        dense = journal.candidates("dense")[0]
        dense_mj = _energy(dense.measurement)
        (device,) = dense_mj
        assert dense_mj[device] > 0
        assert dense.measurement[device]["meter"] == "rapl:package-0"
        rows = journal.candidates("floor") + journal.candidates("search")
        measured = [r for r in rows if r.measurement and not r.reused]
        assert measured and measured[0].phase == "floor"  # the reachability check measured the floor plan
        for row in measured:
            mj = _energy(row.measurement)[device]
            assert mj > 0, row.measurement
            ratio = mj / objective.target.resolve(dense_mj[device])
            assert row.reward == pytest.approx(constrained_reward(row.accuracy, ratio, objective.constraint))
        # the floor plan does far less work than dense: the CPU-driven meter must see it
        floor = measured[0]
        assert floor.macs < 0.6 * dense.macs
        assert _energy(floor.measurement)[device] < dense_mj[device]
        final_row = journal.candidates("final")[0]
        assert any(r.plan_hash == final_row.plan_hash for r in measured)  # a measured plan was finished

    (final,) = result["finals"]
    assert final["energy_mj"][device] > 0 and final["latency_ms"][device] > 0
    assert result["dense"]["energy_mj"][device] == pytest.approx(dense_mj[device])
    stored = json.loads((config.out / "result.json").read_text())
    assert stored["finals"][0]["energy_mj"] == final["energy_mj"]
    report = (config.out / "report.md").read_text()
    assert "mJ" in report and f"{final['energy_mj'][device]:.3f}" in report


def test_energy_objective_refused_without_a_meter(tmp_path, trained_resnet20_mnist):
    """An agent without a meter: SearchError before any candidate, and the --out directory is reusable."""
    from host.errors import SearchError
    from host.search.runner import SearchRunner

    (tmp_path / "empty-sysfs").mkdir()
    with _agent(tmp_path, tmp_path / "empty-sysfs") as address:  # a board with no RAPL zone
        config = _energy_config(tmp_path / "run", trained_resnet20_mnist, address)
        with pytest.raises(SearchError, match="needs an energy meter") as caught:
            SearchRunner.start(config).run()
        assert address in str(caught.value) and "latency" in caught.value.hint
        assert not (config.out / JOURNAL_NAME).exists()
        assert not any(config.out.iterdir())  # nothing half-made: the same --out works again


def test_absolute_energy_targets(energy_search, trained_resnet20_mnist, metered_agent, tmp_path):
    """``NmJ`` targets: one below what the most aggressive plan uses fails before the search with a hint in
    mJ; one between that plan and dense (taken from the first run's measurements) runs and rewards against it."""
    from host.errors import SearchError
    from host.search.reward import constrained_reward
    from host.search.runner import SearchRunner

    config, result = energy_search
    with Journal.open(config.out) as journal:
        dense_mj = next(iter(_energy(journal.candidates("dense")[0].measurement).values()))
        floor_mj = next(iter(_energy(journal.candidates("floor")[0].measurement).values()))

    tiny = _energy_config(tmp_path / "unreachable", trained_resnet20_mnist, metered_agent,
                          target=f"{floor_mj / 100:.6f}mJ")
    with pytest.raises(SearchError, match="no plan reaches the energy target") as caught:
        SearchRunner.start(tiny).run()
    assert "mJ" in caught.value.hint
    assert not (tiny.out / JOURNAL_NAME).exists()

    target_mj = (dense_mj + floor_mj) / 2
    reachable = _energy_config(tmp_path / "absolute", trained_resnet20_mnist, metered_agent,
                               target=f"{target_mj:.4f}mJ", budget=1, final_top=0)
    run = SearchRunner.start(reachable).run()
    assert run["target"].endswith("mJ") and run["candidates_evaluated"] == 1
    objective = reachable.reward_objective()
    assert not objective.target.relative
    with Journal.open(reachable.out) as journal:
        for row in [r for r in journal.candidates("search") if r.measurement and not r.reused]:
            mj = next(iter(_energy(row.measurement).values()))
            assert row.reward == pytest.approx(
                constrained_reward(row.accuracy, mj / objective.target.value, objective.constraint))

"""The one benchmark policy type of the host: the agent's :class:`device_agent.bench.Policy` (same fields and
defaults, one definition) plus the host's named presets.

* ``BenchPolicy()`` is the agent's own default (``sculpt-agent bench``, ``fleet bench``): ~50 runs / 1 s.
* :meth:`BenchPolicy.search` times every measured search candidate: short, :data:`SEARCH_RUNS` runs / 0.2 s.
* :meth:`BenchPolicy.final` times the final models and the dense model beside them, in interleaved rounds:
  :data:`FINAL_RUNS` runs / 1 s per round.
* :meth:`BenchPolicy.for_energy` lifts the run cap so that the timed window alone sets an energy figure's span.

Importing this module loads neither protobuf nor gRPC (the search config holds policies).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from device_agent.bench import Policy

SEARCH_RUNS = 20
SEARCH_SECONDS = 0.2
FINAL_RUNS = 50
FINAL_SECONDS = 1.0
FINAL_WARMUP_RUNS = 10
# an energy figure is the mean power over the timed window, so the window must span many meter samples:
# with energy on, the run cap is lifted and ``min_seconds`` alone sets the window (a fast model otherwise
# hits the cap after a few ms, e.g. 200 runs of a 0.2 ms model = 40 ms, under one INA3221 sample period)
ENERGY_MAX_RUNS = 1_000_000


@dataclass(frozen=True)
class BenchPolicy(Policy):
    """Warm-up and repetition policy sent with every benchmark (see the module docstring for the presets)."""

    @classmethod
    def timed(cls, runs: int, seconds: float, warmup_runs: int | None = None) -> BenchPolicy:
        """At least ``runs`` timed runs and ``seconds`` of timing. Warm-up: ``warmup_runs`` (default a quarter
        of ``runs``, at least 2) and up to 0.2 s; caps: 20x the runs (at least 200) and 4x the seconds (at
        least 10 s), so that a slow model still returns and a fast one is not timed for ever."""
        if runs < 1 or seconds < 0:
            raise ValueError(f"a benchmark needs >= 1 run and >= 0 s (got {runs} runs, {seconds} s)")
        return cls(warmup_runs=max(2, runs // 4) if warmup_runs is None else warmup_runs,
                   warmup_seconds=min(0.2, seconds), min_runs=runs, min_seconds=seconds,
                   max_runs=max(runs * 20, 200), max_seconds=max(10.0, seconds * 4))

    @classmethod
    def search(cls, runs: int = SEARCH_RUNS, seconds: float = SEARCH_SECONDS) -> BenchPolicy:
        """Short policy for the search loop (every measured candidate)."""
        return cls.timed(runs, seconds)

    @classmethod
    def final(cls, runs: int = FINAL_RUNS, seconds: float = FINAL_SECONDS,
              warmup_runs: int = FINAL_WARMUP_RUNS) -> BenchPolicy:
        """Longer policy for the final models and dense beside them (each of the interleaved rounds)."""
        return cls.timed(runs, seconds, warmup_runs)

    def for_energy(self) -> BenchPolicy:
        """The same policy with the run cap lifted (:data:`ENERGY_MAX_RUNS`): the timed window sets the span."""
        return replace(self, max_runs=ENERGY_MAX_RUNS)

    def gate_wait_s(self) -> float:
        """Longest the agent may wait for the board to cool before timing (0 without a temperature gate)."""
        return self.cooldown_timeout_seconds if self.max_temperature_c > 0 else 0.0

    def to_proto(self) -> Any:
        """The protocol message (``agent_pb2.BenchPolicy``)."""
        from protos.agent.v1 import agent_pb2 as pb

        return pb.BenchPolicy(**self.__dict__)

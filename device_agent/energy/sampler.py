"""Background sampling of a meter over a window, and the energy figures derived from it."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from device_agent.energy.base import counter_delta

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """Mean power over a sampled window."""

    mean_power_w: float
    sample_count: int
    elapsed_s: float


class Sampler:
    """Samples a power meter (or accumulates an energy counter, handling wrap) in a background thread."""

    def __init__(self, meter, interval_s: float) -> None:
        self.meter = meter
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._powers: list[float] = []
        self._energy_uj = 0
        self._last: list[int] | None = None
        self._count = 0
        self._error: Exception | None = None
        self._t0 = 0.0
        self._t1 = 0.0

    @property
    def _is_counter(self) -> bool:
        return hasattr(self.meter, "read_counters_uj")

    def _sample(self) -> None:
        if self._is_counter:
            now = self.meter.read_counters_uj()
            if self._last is not None:
                self._energy_uj += sum(counter_delta(a, b, m)
                                       for a, b, m in zip(self._last, now, self.meter.max_ranges_uj, strict=True))
            self._last = now
        else:
            self._powers.append(self.meter.read_watts())
        self._count += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._sample()
            except Exception as exc:  # noqa: BLE001 - reported by stop()
                self._error = exc
                return

    @property
    def started(self) -> bool:
        """Whether :meth:`start` was called."""
        return self._thread is not None

    def start(self) -> None:
        """Take the first sample and start the background thread."""
        self._t0 = time.monotonic()
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="energy-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> Window:
        """Stop, take a last sample and return the mean power over the window."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        # the clock is read before the counter, as in start(): reading it after would add the wait for the GIL
        # that follows the file read (other threads of the agent) to the window but not to the energy
        self._t1 = time.monotonic()
        self._sample()
        elapsed = max(self._t1 - self._t0, 1e-9)
        if self._is_counter:
            mean = self._energy_uj / 1e6 / elapsed
        else:
            mean = sum(self._powers) / len(self._powers)
        return Window(mean, self._count, elapsed)


def measure_idle(meter, seconds: float, interval_s: float) -> Window:
    """Mean power while nothing runs, measured for ``seconds``."""
    sampler = Sampler(meter, interval_s)
    sampler.start()
    time.sleep(seconds)
    return sampler.stop()

"""A pool of connected devices that hands out idle ones, so the search can spread candidates across
identical boards. One job per device at a time; a device that keeps failing at transport level is taken
out of the pool and its job moves to another device."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from host.devices.connect import ConnectOptions, DeviceHandle
from host.devices.retry import classify
from host.errors import DeviceUnreachableError

if TYPE_CHECKING:
    from host.devices.address import DeviceNames

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class DevicePool:
    """Hands out idle, online devices. Not the owner of the handles unless ``close`` is called."""

    def __init__(self, handles: Iterable[DeviceHandle], offline_after: int = 2) -> None:
        self.handles = list(handles)
        if not self.handles:
            raise ValueError("a device pool needs at least one device")
        self.offline_after = offline_after
        self._idle = list(self.handles)
        self._failures = {h.label: 0 for h in self.handles}
        self.offline: set[str] = set()
        self._cond = threading.Condition()

    @classmethod
    def open(
        cls,
        addresses: Iterable[str],
        options: ConnectOptions | None = None,
        *,
        fleet: DeviceNames | None = None,
        require_all: bool = True,
        offline_after: int = 2,
    ) -> DevicePool:
        """Connect to every device (addresses or fleet names) at once, e.g. for the search's ``--device``.

        With ``require_all`` the first failure is raised (after closing the rest); otherwise unreachable
        devices are logged and left out, and only a pool with no device at all is an error.
        """
        from host.devices.address import parse_device
        from host.devices.connect import connect

        texts = list(addresses)
        addrs = [parse_device(t, fleet) for t in texts]  # bad text fails before any connection
        with ThreadPoolExecutor(max_workers=max(1, len(addrs))) as ex:
            outcomes = list(ex.map(lambda a: _try(lambda: connect(a, options)), addrs))
        handles = [o for o in outcomes if isinstance(o, DeviceHandle)]
        errors = [(t, o) for t, o in zip(texts, outcomes, strict=True) if not isinstance(o, DeviceHandle)]
        if errors and (require_all or not handles):
            for h in handles:
                h.close()
            raise errors[0][1]
        for text, exc in errors:
            log.warning("device %s left out of the pool: %s", text, exc)
        return cls(handles, offline_after=offline_after)

    def online(self) -> list[DeviceHandle]:
        """Handles not taken out of the pool."""
        return [h for h in self.handles if h.label not in self.offline]

    def fingerprints(self) -> dict[str, str]:
        """Fingerprint per online device, from its last GetInfo; identical boards share one."""
        return {h.label: getattr(h.info, "fingerprint", "") or "" for h in self.online()}

    @contextmanager
    def acquire(self, timeout: float | None = None) -> Iterator[DeviceHandle]:
        """Wait for an idle online device and lend it; failures inside the block count against it."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._idle or not self.online(), timeout=timeout):
                raise DeviceUnreachableError(f"no device became idle within {timeout}s")
            if not self._idle:
                raise DeviceUnreachableError(
                    "every device of the pool is offline: " + ", ".join(sorted(self.offline)),
                    hint="check the boards with `sculpt-host devices ping ADDRESS`",
                )
            handle = self._idle.pop(0)
        ok = False
        try:
            yield handle
            ok = True
        except Exception as exc:
            self._failed(handle, exc)
            raise
        finally:
            with self._cond:
                if ok:
                    self._failures[handle.label] = 0
                if handle.label not in self.offline:
                    self._idle.append(handle)
                self._cond.notify_all()

    def _failed(self, handle: DeviceHandle, exc: BaseException) -> None:
        kind = classify(exc)
        if kind == "failed":  # the job failed on a working device
            with self._cond:
                self._failures[handle.label] = 0
            return
        with self._cond:
            self._failures[handle.label] += 1
            if kind == "fatal" or self._failures[handle.label] >= self.offline_after:
                self.offline.add(handle.label)
                log.warning("device %s taken out of the pool: %s", handle.label, exc)
            self._cond.notify_all()

    def run(self, fn: Callable[[DeviceHandle], R]) -> R:
        """Run ``fn`` on an idle device; when the device fails at transport level, try another one.

        ``fn`` must be safe to repeat (benchmarks by artifact hash and job id are).
        """
        while True:
            try:
                with self.acquire() as handle:
                    return fn(handle)
            except Exception as exc:
                if classify(exc) != "transient" or not self.online():
                    raise
                log.info("retrying on another device after: %s", exc)

    def map(self, fn: Callable[[DeviceHandle, T], R], items: Iterable[T]) -> list[R | BaseException]:
        """Run ``fn(handle, item)`` for every item, all devices busy at once; results (or the exception of
        an item that failed everywhere) in item order."""
        items = list(items)

        def one(item: T) -> R | BaseException:
            try:
                return self.run(lambda h: fn(h, item))
            except Exception as exc:
                return exc

        with ThreadPoolExecutor(max_workers=max(1, len(self.handles))) as ex:
            return list(ex.map(one, items))

    def close(self) -> None:
        """Close every handle."""
        for h in self.handles:
            h.close()


def _try(fn: Callable[[], T]) -> T | Exception:
    try:
        return fn()
    except Exception as exc:  # collected and re-raised (or logged) by the caller
        return exc

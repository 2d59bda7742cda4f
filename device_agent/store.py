"""Content-addressed artifact store with a size cap and least-recently-used eviction."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from device_agent.artifact import HEADER_BYTES, check_sha256, detect_kind
from device_agent.errors import AgentConfigError, AgentError, invalid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredArtifact:
    """An artifact on disk, verified when it was stored."""

    sha256: str
    size_bytes: int
    kind: str
    path: Path


MARKER = "sculpt-agent-store.json"  # at the root of every store; its absence means "not ours"
LAYOUT = 1  # bumped when the layout changes; an agent refuses a layout it does not know
UPLOAD_PREFIX = "upload-"  # temporary files of uploads in progress, in root/tmp/
_SHARD = re.compile(r"[0-9a-f]{2}")
_SHA = re.compile(r"[0-9a-f]{64}")


class ArtifactStore:
    """Artifacts under ``root/<sha[:2]>/<sha>``; the total is kept under ``capacity_bytes`` by LRU eviction.

    Recency is the file's mtime, bumped on every use, so it survives restarts. Artifacts in use by a running
    benchmark are pinned and never evicted. Uploads in progress count against the capacity by their
    declared size.

    The store only ever deletes files it wrote: ``root`` must be new, empty, or a store (it has the marker
    file :data:`MARKER`); anything else is refused, and files in a store that it did not write are left
    alone. An ``ephemeral`` store must be new or empty and is deleted by :meth:`destroy`.
    """

    def __init__(self, root: Path, capacity_bytes: int, max_artifact_bytes: int, *, ephemeral: bool = False) -> None:
        self.root = Path(root)
        self.capacity_bytes = capacity_bytes
        self.max_artifact_bytes = max_artifact_bytes
        self.ephemeral = ephemeral
        self._lock = threading.Lock()
        self._pinned: dict[str, int] = {}
        self._index: dict[str, StoredArtifact] = {}
        self._reserved = 0  # declared bytes of uploads in progress
        self._open()
        self._scan()

    def _open(self) -> None:
        root, marker = self.root, self.root / MARKER
        if root.exists() and not root.is_dir():
            raise AgentConfigError(f"artifact store {root} is a file, not a folder; pass --store with a folder")
        if marker.is_file() and not self.ephemeral:
            _check_marker(marker)
        elif not root.exists() or not any(root.iterdir()):
            root.mkdir(parents=True, exist_ok=True)
            _write_marker(marker)
        elif self.ephemeral:
            raise AgentConfigError(f"an ephemeral store is deleted when the agent stops, so it must be a new or "
                                   f"empty folder, and {root} is not empty; pass another --store")
        elif _is_unmarked_store(root):  # written by an agent from before the marker: adopt it
            log.info("adopting artifact store %s written by an older agent", root)
            _write_marker(marker)
        else:
            raise AgentConfigError(
                f"{root} is not empty and is not a sculpt-agent artifact store (it has no {MARKER}); the agent "
                "refuses it so as never to touch files it did not write. Pass --store (or store_dir in the "
                "config) a new or empty folder, e.g. ~/.cache/sculpt-agent/store"
            )
        (root / "tmp").mkdir(exist_ok=True)

    def _scan(self) -> None:
        for shard in sorted(self.root.iterdir()):
            if shard.name in (MARKER, "tmp"):
                continue
            if not (_SHARD.fullmatch(shard.name) and shard.is_dir() and not shard.is_symlink()):
                log.warning("ignoring %s in the artifact store: not written by the agent", shard)
                continue
            for path in sorted(shard.iterdir()):
                art = _stored(path, shard.name)
                if art is None:
                    log.warning("ignoring %s in the artifact store: not an artifact the agent wrote", path)
                    continue
                self._index[art.sha256] = art
        for stale in (self.root / "tmp").iterdir():
            if stale.name.startswith(UPLOAD_PREFIX) and stale.is_file() and not stale.is_symlink():
                stale.unlink(missing_ok=True)  # an upload cut short by a crash or restart
            else:
                log.warning("ignoring %s in the artifact store: not written by the agent", stale)

    def destroy(self) -> None:
        """Delete an ephemeral store and everything in it (it was new or empty when the agent took it)."""
        if not self.ephemeral:
            raise RuntimeError("only an ephemeral store is destroyed")  # a programming error, not user input
        with self._lock:
            self._index.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def bytes_used(self) -> int:
        """Total size of the stored artifacts."""
        with self._lock:
            return sum(a.size_bytes for a in self._index.values())

    def get(self, sha256: str) -> StoredArtifact | None:
        """The stored artifact with this hash, or None; marks it as recently used."""
        check_sha256(sha256)
        with self._lock:
            art = self._index.get(sha256)
        if art is not None:
            try:
                os.utime(art.path)
            except FileNotFoundError:  # removed behind our back: forget it
                with self._lock:
                    self._index.pop(sha256, None)
                return None
        return art

    def put(self, sha256: str, size_bytes: int, chunks: Iterator[bytes]) -> tuple[StoredArtifact, bool]:
        """Stream ``chunks`` into the store, verifying size cap, declared size, kind and SHA-256.

        Returns ``(artifact, already_present)``; when present the chunks are drained unread into nothing.
        """
        check_sha256(sha256)
        if size_bytes > self.max_artifact_bytes:
            raise AgentError(
                "RESOURCE_EXHAUSTED",
                f"artifact is {size_bytes} bytes, over this agent's cap of {self.max_artifact_bytes} bytes; "
                "raise max_artifact_mib in the agent config",
            )
        existing = self.get(sha256)
        if existing is not None:
            for _ in chunks:  # the client may still be sending; consume so the stream ends cleanly
                pass
            return existing, True
        self._reserve(size_bytes)
        try:
            art = self._receive(sha256, size_bytes, chunks)
        finally:
            with self._lock:
                self._reserved -= size_bytes
        self._evict(keep=sha256)
        log.info("stored artifact %s (%s, %d bytes)", sha256[:12], art.kind, size_bytes)
        return art, False

    def _reserve(self, size_bytes: int) -> None:
        # A stalled upload holds its temporary file, so it counts against the cap from the start: clients that
        # open uploads and stop sending cannot fill the disk past store_capacity_mib.
        with self._lock:
            self._evict_locked(self.capacity_bytes - self._reserved - size_bytes, keep=None)
            used = sum(a.size_bytes for a in self._index.values())
            if used + self._reserved + size_bytes > self.capacity_bytes:
                raise AgentError(
                    "RESOURCE_EXHAUSTED",
                    f"the artifact store has no room for {size_bytes} bytes: {used} bytes of artifacts in use by "
                    f"benchmarks and {self._reserved} bytes of uploads in progress, of a {self.capacity_bytes}-byte "
                    "capacity; retry later or raise store_capacity_mib in the agent config",
                )
            self._reserved += size_bytes

    def _receive(self, sha256: str, size_bytes: int, chunks: Iterator[bytes]) -> StoredArtifact:
        digest = hashlib.sha256()
        received = 0
        head = b""
        fd, tmp_name = tempfile.mkstemp(dir=self.root / "tmp", prefix=UPLOAD_PREFIX)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    received += len(chunk)
                    if received > size_bytes or received > self.max_artifact_bytes:
                        raise invalid(
                            f"upload sent more than the declared {size_bytes} bytes"
                            if received > size_bytes else
                            f"upload exceeds this agent's cap of {self.max_artifact_bytes} bytes"
                        )
                    if len(head) < HEADER_BYTES:
                        head += chunk[: HEADER_BYTES - len(head)]
                    digest.update(chunk)
                    out.write(chunk)
            if received != size_bytes:
                raise invalid(f"upload ended after {received} of the declared {size_bytes} bytes")
            actual = digest.hexdigest()
            if actual != sha256:
                raise invalid(f"SHA-256 mismatch: header says {sha256}, data hashes to {actual}; re-send the file")
            kind = detect_kind(head, size_bytes)
            final = self.root / sha256[:2] / sha256
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        art = StoredArtifact(sha256, size_bytes, kind, final)
        with self._lock:
            self._index[sha256] = art
        return art

    def pin(self, sha256: str) -> None:
        """Protect an artifact from eviction while a benchmark uses it."""
        with self._lock:
            self._pinned[sha256] = self._pinned.get(sha256, 0) + 1

    def unpin(self, sha256: str) -> None:
        """Undo one :meth:`pin`."""
        with self._lock:
            left = self._pinned.get(sha256, 0) - 1
            if left > 0:
                self._pinned[sha256] = left
            else:
                self._pinned.pop(sha256, None)

    def _evict(self, keep: str) -> None:
        with self._lock:
            self._evict_locked(self.capacity_bytes - self._reserved, keep)

    def _evict_locked(self, budget: int, keep: str | None) -> None:
        # With the lock held: drop least recently used, unpinned artifacts until they fit in ``budget``.
        total = sum(a.size_bytes for a in self._index.values())
        if total <= budget:
            return
        candidates = sorted(
            (a for s, a in self._index.items() if s != keep and s not in self._pinned),
            key=lambda a: _mtime(a.path),
        )
        for art in candidates:
            if total <= budget:
                break
            art.path.unlink(missing_ok=True)
            self._index.pop(art.sha256, None)
            total -= art.size_bytes
            log.info("evicted artifact %s (%d bytes) to stay under the store cap", art.sha256[:12], art.size_bytes)


def _stored(path: Path, shard: str) -> StoredArtifact | None:
    """The artifact at ``path`` if it has the layout the agent writes (a regular file named by its hash)."""
    if not (_SHA.fullmatch(path.name) and path.name.startswith(shard)) or path.is_symlink():
        return None
    try:
        if not path.is_file():
            return None
        size = path.stat().st_size
        with path.open("rb") as f:
            kind = detect_kind(f.read(HEADER_BYTES), size)
    except (AgentError, OSError):
        return None
    return StoredArtifact(path.name, size, kind, path)


def _write_marker(marker: Path) -> None:
    from device_agent import __version__

    marker.write_text(json.dumps({"layout": LAYOUT, "created_by": f"sculpt-agent {__version__}"}) + "\n")


def _check_marker(marker: Path) -> None:
    try:
        layout = json.loads(marker.read_text(encoding="utf-8")).get("layout")
    except (OSError, ValueError, AttributeError) as exc:
        raise AgentConfigError(f"cannot read the store marker {marker}: {exc}; the store may be damaged: pass "
                               "another --store") from exc
    if layout != LAYOUT:
        raise AgentConfigError(f"artifact store {marker.parent} has layout {layout!r}; this agent knows layout "
                               f"{LAYOUT}. Use the agent version that wrote it, or pass another --store")


def _is_unmarked_store(root: Path) -> bool:
    """Whether ``root`` holds exactly what an agent from before the marker wrote, and nothing else: ``tmp/``
    and 2-hex-digit folders holding only files named by their SHA-256."""
    for entry in root.iterdir():
        if entry.is_symlink() or not entry.is_dir():
            return False
        if entry.name == "tmp":
            continue
        if not _SHARD.fullmatch(entry.name):
            return False
        for path in entry.iterdir():
            if not (_SHA.fullmatch(path.name) and path.name.startswith(entry.name)) or path.is_symlink() \
                    or not path.is_file():
                return False
    return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()

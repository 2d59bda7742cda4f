"""Content-addressed artifact store with a size cap and least-recently-used eviction."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from device_agent.artifact import HEADER_BYTES, check_sha256, detect_kind
from device_agent.errors import AgentError, invalid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredArtifact:
    """An artifact on disk, verified when it was stored."""

    sha256: str
    size_bytes: int
    kind: str
    path: Path


class ArtifactStore:
    """Artifacts under ``root/<sha[:2]>/<sha>``; the total is kept under ``capacity_bytes`` by LRU eviction.

    Recency is the file's mtime, bumped on every use, so it survives restarts. Artifacts in use by a running
    benchmark are pinned and never evicted.
    """

    def __init__(self, root: Path, capacity_bytes: int, max_artifact_bytes: int) -> None:
        self.root = Path(root)
        self.capacity_bytes = capacity_bytes
        self.max_artifact_bytes = max_artifact_bytes
        self._lock = threading.Lock()
        self._pinned: dict[str, int] = {}
        self._index: dict[str, StoredArtifact] = {}
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        self._scan()

    def _scan(self) -> None:
        for path in self.root.glob("??/*"):
            try:
                sha = check_sha256(path.name)
                with path.open("rb") as f:
                    kind = detect_kind(f.read(HEADER_BYTES), path.stat().st_size)
            except (AgentError, OSError):
                log.warning("removing unrecognised file %s from the artifact store", path)
                path.unlink(missing_ok=True)
                continue
            self._index[sha] = StoredArtifact(sha, path.stat().st_size, kind, path)
        for stale in (self.root / "tmp").iterdir():
            stale.unlink(missing_ok=True)

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
        digest = hashlib.sha256()
        received = 0
        head = b""
        fd, tmp_name = tempfile.mkstemp(dir=self.root / "tmp")
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
        self._evict(keep=sha256)
        log.info("stored artifact %s (%s, %d bytes)", sha256[:12], kind, size_bytes)
        return art, False

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
            total = sum(a.size_bytes for a in self._index.values())
            if total <= self.capacity_bytes:
                return
            candidates = sorted(
                (a for s, a in self._index.items() if s != keep and s not in self._pinned),
                key=lambda a: _mtime(a.path),
            )
            for art in candidates:
                if total <= self.capacity_bytes:
                    break
                art.path.unlink(missing_ok=True)
                self._index.pop(art.sha256, None)
                total -= art.size_bytes
                log.info("evicted artifact %s (%d bytes) to stay under the store cap", art.sha256[:12], art.size_bytes)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()

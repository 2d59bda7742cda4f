import hashlib
import os
import struct

import pytest

from device_agent.artifact import PTE, TFLITE, check_sha256, detect_kind
from device_agent.errors import AgentError
from device_agent.store import ArtifactStore


def fake_artifact(ident: bytes, size: int, fill: int = 0) -> bytes:
    """Header-valid bytes (root offset 16, given identifier); enough for the store, not for a runtime."""
    return struct.pack("<I", 16) + ident + bytes([fill]) * (size - 8)


def put(store, data):
    sha = hashlib.sha256(data).hexdigest()
    chunks = [data[i:i + 1000] for i in range(0, len(data), 1000)]
    return store.put(sha, len(data), iter(chunks))


def test_detect_kind():
    assert detect_kind(fake_artifact(b"ET12", 64)[:8], 64) == PTE
    assert detect_kind(fake_artifact(b"TFL3", 64)[:8], 64) == TFLITE
    for bad in (fake_artifact(b"ETxx", 64), fake_artifact(b"ONNX", 64), b"\x00" * 64):
        with pytest.raises(AgentError) as err:
            detect_kind(bad[:8], 64)
        assert err.value.code == "INVALID_ARGUMENT"
    with pytest.raises(AgentError, match="outside"):
        detect_kind(struct.pack("<I", 5000) + b"TFL3", 64)
    with pytest.raises(AgentError, match="too small"):
        detect_kind(b"\x10\x00\x00\x00TFL3", 8)


def test_check_sha256():
    assert check_sha256("a" * 64) == "a" * 64
    for bad in ("A" * 64, "a" * 63, "", "g" * 64):
        with pytest.raises(AgentError):
            check_sha256(bad)


def test_put_get_and_already_present(tmp_path):
    store = ArtifactStore(tmp_path, capacity_bytes=10_000, max_artifact_bytes=5_000)
    data = fake_artifact(b"TFL3", 3000)
    art, present = put(store, data)
    assert not present and art.kind == TFLITE and art.path.read_bytes() == data
    assert store.get(art.sha256) == art and store.bytes_used == 3000
    again, present = put(store, data)
    assert present and again == art
    assert store.get("0" * 64) is None
    # A restarted agent finds its artifacts again.
    assert ArtifactStore(tmp_path, 10_000, 5_000).get(art.sha256) == art


@pytest.mark.parametrize("declared,payload,message", [
    (3000, 2999, "ended after"), (3000, 3001, "more than the declared"), (6000, 6000, "cap"),
])
def test_size_errors(tmp_path, declared, payload, message):
    store = ArtifactStore(tmp_path, 100_000, 5_000)
    data = fake_artifact(b"ET12", payload)
    with pytest.raises(AgentError, match=message):
        store.put(hashlib.sha256(data).hexdigest(), declared, iter([data]))
    assert store.bytes_used == 0 and not any((tmp_path / "tmp").iterdir())


def test_hash_mismatch_is_refused_and_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path, 100_000, 5_000)
    data = fake_artifact(b"ET12", 100)
    with pytest.raises(AgentError, match="SHA-256 mismatch"):
        store.put("f" * 64, len(data), iter([data]))
    assert store.bytes_used == 0 and not any((tmp_path / "tmp").iterdir())


def test_lru_eviction_keeps_recent_and_pinned(tmp_path):
    store = ArtifactStore(tmp_path, capacity_bytes=3000, max_artifact_bytes=1000)
    arts = [put(store, fake_artifact(b"TFL3", 1000, fill=i))[0] for i in range(3)]
    for i, art in enumerate(arts):  # make the ages unambiguous
        os.utime(art.path, (1000 + i, 1000 + i))
    store.get(arts[0].sha256)  # now the most recent
    store.pin(arts[1].sha256)  # in use: never evicted
    put(store, fake_artifact(b"TFL3", 1000, fill=9))
    assert store.get(arts[2].sha256) is None  # oldest unpinned went
    assert store.get(arts[0].sha256) is not None and store.get(arts[1].sha256) is not None
    assert store.bytes_used == 3000
    store.unpin(arts[1].sha256)


def test_junk_in_the_store_is_removed_on_start(tmp_path):
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "not-a-hash").write_bytes(b"junk")
    ArtifactStore(tmp_path, 1000, 1000)
    assert not (tmp_path / "ab" / "not-a-hash").exists()

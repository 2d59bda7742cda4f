import hashlib
import json
import os
import struct
import threading
import time

import pytest

from device_agent.artifact import PTE, TFLITE, check_sha256, detect_kind
from device_agent.errors import AgentConfigError, AgentError
from device_agent.store import LAYOUT, MARKER, UPLOAD_PREFIX, ArtifactStore


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


def _user_folder(root):
    """A folder a user might pass by mistake (``--store ~``): 2-character sub-folders, a tmp/, a nested folder."""
    files = {"ab/notes.txt": b"my notes", "tmp/draft.txt": b"draft", "cd/deep/thesis.tex": b"thesis",
             "readme.md": b"hello"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_a_non_empty_folder_that_is_not_a_store_is_refused_untouched(tmp_path):
    files = _user_folder(tmp_path)
    with pytest.raises(AgentConfigError, match="not a sculpt-agent artifact store") as err:
        ArtifactStore(tmp_path, 10_000, 5_000)
    assert "new or empty folder" in str(err.value)
    assert {rel: (tmp_path / rel).read_bytes() for rel in files} == files
    assert not (tmp_path / MARKER).exists()


def test_a_new_or_empty_folder_becomes_a_store_with_a_marker(tmp_path):
    for root in (tmp_path / "new" / "store", tmp_path / "empty"):
        if root.name == "empty":
            root.mkdir()
        store = ArtifactStore(root, 10_000, 5_000)
        assert json.loads((root / MARKER).read_text())["layout"] == LAYOUT
        art, _ = put(store, fake_artifact(b"TFL3", 100))
        assert ArtifactStore(root, 10_000, 5_000).get(art.sha256) == art  # reopened: its marker is found


def test_files_in_a_store_that_the_agent_did_not_write_are_left_alone(tmp_path):
    store = ArtifactStore(tmp_path, 10_000, 5_000)
    art, _ = put(store, fake_artifact(b"TFL3", 100))
    foreign = {"ab/not-a-hash": b"junk", "tmp/users-file": b"mine", "zz/x": b"x", "notes.txt": b"n",
               f"{art.sha256[:2]}/{'0' * 64}": b"wrong shard name"}
    for rel, data in foreign.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    (tmp_path / "ab" / "a-folder").mkdir()  # the old scan died here with "Is a directory"
    stale = tmp_path / "tmp" / f"{UPLOAD_PREFIX}abc123"
    stale.write_bytes(b"half an upload")
    again = ArtifactStore(tmp_path, 10_000, 5_000)
    assert again.get(art.sha256) == art and again.bytes_used == 100
    assert {rel: (tmp_path / rel).read_bytes() for rel in foreign} == foreign
    assert (tmp_path / "ab" / "a-folder").is_dir()
    assert not stale.exists()  # an upload temporary of its own is removed


def test_a_store_from_before_the_marker_is_adopted(tmp_path):
    data = fake_artifact(b"ET12", 200)
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / sha[:2]).mkdir()
    (tmp_path / sha[:2] / sha).write_bytes(data)
    (tmp_path / "tmp").mkdir()
    store = ArtifactStore(tmp_path, 10_000, 5_000)
    assert store.get(sha).kind == PTE and (tmp_path / MARKER).is_file()


def test_an_unknown_layout_is_refused(tmp_path):
    ArtifactStore(tmp_path, 10_000, 5_000)
    (tmp_path / MARKER).write_text(json.dumps({"layout": LAYOUT + 1}))
    with pytest.raises(AgentConfigError, match="layout"):
        ArtifactStore(tmp_path, 10_000, 5_000)


def test_an_ephemeral_store_needs_an_empty_folder_and_is_destroyed(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(AgentConfigError, match="ephemeral"):
        ArtifactStore(tmp_path / "used", 10_000, 5_000, ephemeral=True)
    assert (tmp_path / "used" / "file").exists()
    store = ArtifactStore(tmp_path / "eph", 10_000, 5_000, ephemeral=True)
    put(store, fake_artifact(b"TFL3", 100))
    store.destroy()
    assert not (tmp_path / "eph").exists()


def test_uploads_in_progress_count_against_the_capacity(tmp_path):
    store = ArtifactStore(tmp_path, capacity_bytes=2000, max_artifact_bytes=1000)
    release = threading.Event()
    results = []

    def stalled_upload(fill):  # sends its header and a few bytes, then stalls
        data = fake_artifact(b"TFL3", 1000, fill=fill)

        def chunks():
            yield data[:10]
            release.wait(10)
            yield data[10:]

        results.append(store.put(hashlib.sha256(data).hexdigest(), len(data), chunks())[0])

    threads = [threading.Thread(target=stalled_upload, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while len(list((tmp_path / "tmp").iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(AgentError) as err:
        put(store, fake_artifact(b"TFL3", 1000, fill=9))
    assert err.value.code == "RESOURCE_EXHAUSTED" and "uploads in progress" in err.value.message
    release.set()
    for t in threads:
        t.join(10)
    assert len(results) == 2 and store.bytes_used == 2000
    put(store, fake_artifact(b"TFL3", 1000, fill=9))  # now the least recently used one is evicted for it
    assert store.bytes_used == 2000

import json
import re

import pytest

from host.errors import ConfigError, PlanError
from patterns import PATTERN_VOCAB, LayerAssignment, Plan, families, get_family, vocab_index


def _plan() -> Plan:
    return Plan.from_mapping({"layer2.0.conv1": LayerAssignment("kernel", "row1", ratio=0.5),
                              "conv1": LayerAssignment("channel", "prune25"),
                              "fc": LayerAssignment("nm", "2:4", params=(("note", "x"),))}, model="resnet20")


def test_plan_json_round_trip_is_byte_stable(tmp_path):
    plan = _plan()
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert again.to_json() == plan.to_json()
    path = plan.save(tmp_path / "plan.json")
    assert Plan.load(path) == plan
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1
    assert list(data["layers"]) == sorted(data["layers"])  # sorted, so equal plans give equal files


def test_plan_is_frozen_and_order_independent():
    a = Plan.from_mapping({"b": LayerAssignment("nm", "2:4"), "a": LayerAssignment("kernel", "row1")})
    b = Plan.from_mapping({"a": LayerAssignment("kernel", "row1"), "b": LayerAssignment("nm", "2:4")})
    assert a == b and hash(a) == hash(b)
    assert a.get("a") == LayerAssignment("kernel", "row1") and a.get("zzz") is None
    with pytest.raises(AttributeError):
        a.model = "x"  # type: ignore[misc]


@pytest.mark.parametrize("text, fragment", [
    ("not json", "not valid JSON"),
    ('{"layers": []}', "'layers' object"),
    ('{"schema_version": 99, "layers": {}}', "schema_version 99"),
    ('{"layers": {"conv1": {"family": "kernel", "pattern": "row1", "bogus": 1}}}', "unknown keys"),
])
def test_bad_plan_json_says_what_to_fix(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Plan.from_json(text)


def test_bad_ratio_and_missing_file(tmp_path):
    with pytest.raises(PlanError, match="ratio"):
        LayerAssignment("kernel", "row1", ratio=1.5)
    with pytest.raises(ConfigError, match="cannot read plan"):
        Plan.load(tmp_path / "missing.json")


def test_non_utf8_plan_file_is_a_plan_error_naming_file_and_offset(tmp_path):
    path = tmp_path / "latin1.plan.json"
    text = _plan().to_json()
    offset = text.index("resnet20")
    path.write_bytes(text[:offset].encode() + "r\xe9snet".encode("latin-1") + text[offset + 8:].encode())
    with pytest.raises(PlanError, match=re.escape(f"plan file {path} is not UTF-8 text (byte 0xe9 at offset {offset + 1})")):
        Plan.load(path)


def test_vocab_is_stable_and_complete():
    assert PATTERN_VOCAB[0] == ("keep", "dense")
    assert len(set(PATTERN_VOCAB)) == len(PATTERN_VOCAB)
    for family in families():
        for pattern in get_family(family).patterns():
            assert PATTERN_VOCAB[vocab_index(family, pattern)] == (family, pattern)
    assert ("kernel", "paper6") in PATTERN_VOCAB and ("nm", "2:4") in PATTERN_VOCAB
    with pytest.raises(PlanError, match="unknown pattern family"):
        get_family("nope")


def test_vocab_indices_never_move():
    # The vocabulary as first fixed: later patterns are appended after it, never inserted.
    first = [("keep", "dense"), ("kernel", "row2"), ("kernel", "col2"), ("kernel", "row1"), ("kernel", "col1"),
             ("kernel", "rowcol"), ("kernel", "paper6"), ("kernel", "patdnn4"), ("channel", "prune25"),
             ("channel", "prune50"), ("channel", "prune75"), ("nm", "2:4"), ("nm", "1:4"), ("block", "tile4_50"),
             ("block", "tile4_75"), ("block", "cols4_50"), ("block", "cols4_75"), ("vit", "heads25"),
             ("vit", "heads50"), ("vit", "hidden25"), ("vit", "hidden50"), ("vit", "hidden75")]
    assert list(PATTERN_VOCAB[:len(first)]) == first
    assert PATTERN_VOCAB[len(first)] == ("kernel", "paper6_tiled")

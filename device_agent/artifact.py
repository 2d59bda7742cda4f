"""Cheap checks on model artifacts before any runtime sees them: kind by flatbuffer file identifier, hashes."""

from __future__ import annotations

import re
import struct

from device_agent.errors import invalid, shorten

PTE = "pte"
TFLITE = "tflite"
KINDS = (PTE, TFLITE)
HEADER_BYTES = 8
_SHA256 = re.compile(r"[0-9a-f]{64}")  # used with fullmatch: "$" would accept a trailing newline


def check_sha256(value: str) -> str:
    """Return ``value`` if it is a lowercase hex SHA-256, else raise INVALID_ARGUMENT."""
    # Length first: a huge string is refused without running the regex over it.
    if not isinstance(value, str) or len(value) != 64 or not _SHA256.fullmatch(value):
        raise invalid(f"artifact hash {shorten(value)} is not a lowercase hex SHA-256 (64 characters 0-9a-f)")
    return value


def detect_kind(head: bytes, size: int) -> str:
    """Kind of a flatbuffer artifact from its first bytes: ExecuTorch ``ET`` + 2 digits, TFLite ``TFL3``.

    Also checks that the root table offset points inside the file, which rejects most truncated files.
    """
    if size < 16 or len(head) < HEADER_BYTES:
        raise invalid(f"artifact is {size} bytes: too small to be a .pte or .tflite flatbuffer")
    ident = head[4:8]
    if ident[:2] == b"ET" and ident[2:4].isdigit():
        kind = PTE
    elif ident == b"TFL3":
        kind = TFLITE
    else:
        raise invalid(
            f"artifact has file identifier {ident!r}; expected an ExecuTorch program (b'ET' + 2 digits) "
            "or a TFLite model (b'TFL3'): export it with `sculpt-host export`"
        )
    (root,) = struct.unpack_from("<I", head, 0)
    if root < HEADER_BYTES or root >= size:
        raise invalid(f"artifact root offset {root} lies outside the {size}-byte file: it is truncated or corrupt")
    return kind

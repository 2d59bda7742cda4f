"""connect(): credential files that cannot be used are ConfigErrors naming the file, before any network."""

from __future__ import annotations

import re

import pytest

from host.devices.address import parse_device
from host.devices.connect import ConnectOptions, connect
from host.errors import ConfigError


@pytest.mark.parametrize("address", ["grpc://127.0.0.1:9", "grpcs://127.0.0.1:9"])
def test_non_utf8_token_file_is_a_config_error_naming_the_file(tmp_path, address):
    token = tmp_path / "agent.token"
    token.write_bytes(b"s3cr\xe9t-token\n")  # latin-1, whatever the locale would decode it as
    with pytest.raises(ConfigError, match=re.escape(f"token file {token} is not UTF-8 text (byte 0xe9 at offset 4)")):
        connect(parse_device(address), ConnectOptions(token_file=token))


def test_unreadable_token_file_is_a_config_error_naming_the_file(tmp_path):
    missing = tmp_path / "none.token"
    with pytest.raises(ConfigError, match=re.escape(f"cannot read the token file {missing}")):
        connect(parse_device("grpc://127.0.0.1:9"), ConnectOptions(token_file=missing))

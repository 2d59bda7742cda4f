from pathlib import Path

import pytest

from device_agent.config import AgentConfig, EnergyConfig, TlsConfig, is_loopback_host, load_config
from device_agent.errors import AgentConfigError


def test_defaults_are_loopback_and_valid(tmp_path):
    config = AgentConfig(store_dir=tmp_path)
    assert config.host == "127.0.0.1" and config.port == 50051 and config.is_loopback
    config.validate()
    assert "secret" not in repr(AgentConfig(store_dir=tmp_path, token="secret"))


@pytest.mark.parametrize("host,expected", [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                           ("127.1.2.3", True), ("0.0.0.0", False), ("::", False),
                                           ("192.168.1.5", False), ("pi.local", False)])
def test_is_loopback_host(host, expected):
    assert is_loopback_host(host) is expected


def test_toml_with_relative_paths_token_tls_and_energy(tmp_path):
    (tmp_path / "token").write_text("abc123\n")
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    path = tmp_path / "agent.toml"
    path.write_text(
        'host = "0.0.0.0"\nport = 6000\nstore_dir = "store"\nmax_artifact_mib = 16\nstore_capacity_mib = 64\n'
        'queue_capacity = 3\ntoken_file = "token"\n[tls]\ncert = "c.pem"\nkey = "k.pem"\n'
        '[energy]\nmeter = "rapl"\nroot = "sys-tree"\nidle_seconds = 0.25\n'
    )
    config = load_config(path)
    assert config.host == "0.0.0.0" and config.port == 6000 and config.queue_capacity == 3
    assert config.store_dir == tmp_path / "store"
    assert config.max_artifact_bytes == 16 * 2**20 and config.store_capacity_bytes == 64 * 2**20
    assert config.token == "abc123"
    assert config.tls == TlsConfig(tmp_path / "c.pem", tmp_path / "k.pem", None)
    assert config.energy == EnergyConfig(meter="rapl", root=tmp_path / "sys-tree", idle_seconds=0.25)
    config.validate()  # public address is fine with TLS + token
    override = load_config(path, port=7000, host=None)
    assert override.port == 7000 and override.host == "0.0.0.0"


@pytest.mark.parametrize("text,message", [
    ("bogus = 1\n", "unknown keys"),
    ("[energy]\nfrequency = 3\n", "unknown keys in [energy]"),
    ("[tls]\ncert = 'a'\n", "needs both cert and key"),
    ("token_file = 'missing'\n", "cannot read token file"),
    ("port = \n", "cannot read agent config"),
])
def test_bad_config_files_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(AgentConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(path)


def test_empty_token_file_is_refused(tmp_path):
    (tmp_path / "token").write_text("\n")
    (tmp_path / "agent.toml").write_text('token_file = "token"\n')
    with pytest.raises(AgentConfigError, match="empty"):
        load_config(tmp_path / "agent.toml")


def test_validation_errors(tmp_path):
    with pytest.raises(AgentConfigError, match="out of range"):
        AgentConfig(store_dir=tmp_path, port=70000).validate()
    with pytest.raises(AgentConfigError, match="queue_capacity"):
        AgentConfig(store_dir=tmp_path, queue_capacity=0).validate()
    with pytest.raises(AgentConfigError, match="store_capacity"):
        AgentConfig(store_dir=tmp_path, max_artifact_bytes=10, store_capacity_bytes=5).validate()
    with pytest.raises(AgentConfigError, match="does not exist"):
        AgentConfig(store_dir=tmp_path, tls=TlsConfig(Path("/nope.pem"), Path("/nope.key"))).validate()


def test_worker_cpus_must_exist(tmp_path):
    AgentConfig(store_dir=tmp_path, worker_cpus=(0,)).validate()
    with pytest.raises(AgentConfigError, match="lacks"):
        AgentConfig(store_dir=tmp_path, worker_cpus=(0, 4096)).validate()


def test_files_that_are_not_utf8_are_named_in_the_error(tmp_path):
    from device_agent.config import read_token_file

    bad = tmp_path / "agent.toml"
    bad.write_bytes(b"port = 1 # \xff\xfe\n")
    with pytest.raises(AgentConfigError, match="not UTF-8") as err:
        load_config(bad)
    assert str(bad) in str(err.value) and "0xff" in str(err.value)
    with pytest.raises(AgentConfigError, match="token file .* is not UTF-8"):
        read_token_file(bad)


def test_limits_are_read_from_toml_and_checked(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text("max_timeout_s = 60\nmax_cooldown_s = 5\nmax_request_mib = 8\nresults_kept_mib = 1\n"
                    "default_timeout_s = 30\n")
    config = load_config(path)
    assert (config.max_timeout_s, config.max_cooldown_s) == (60, 5)
    assert (config.max_request_bytes, config.results_kept_bytes) == (8 * 2**20, 2**20)
    config.validate()
    with pytest.raises(AgentConfigError, match="max_timeout_s"):
        load_config(path, default_timeout_s=120.0).validate()

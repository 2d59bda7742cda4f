"""Security defaults: loopback unless TLS + token, bearer tokens, TLS and mutual TLS, on a real server."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from pathlib import Path

import pytest

from device_agent.config import AgentConfig, TlsConfig
from device_agent.errors import AgentConfigError
from device_agent.server import create_server, stop_server
from host.devices.client import AgentClient
from host.errors import DeviceAuthError, DeviceUnreachableError

pytestmark = pytest.mark.integration
TOKEN = "s3cret-token-for-tests-0123456789"


def _write_pki(directory: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject_key, cn, issuer_key, issuer_cn, *, ca=False, san=None, usage=None):
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(issuer_cn))
                   .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = key()
    ca = cert(ca_key, "test-ca", ca_key, "test-ca", ca=True)
    server_key = key()
    server = cert(server_key, "localhost", ca_key, "test-ca", usage=[ExtendedKeyUsageOID.SERVER_AUTH],
                  san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client_key = key()
    client = cert(client_key, "host", ca_key, "test-ca", usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    out = {}
    for label, obj in (("ca", ca), ("server", server), ("client", client)):
        out[f"{label}_cert"] = directory / f"{label}.pem"
        out[f"{label}_cert"].write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    for label, k in (("server", server_key), ("client", client_key)):
        out[f"{label}_key"] = directory / f"{label}.key"
        out[f"{label}_key"].write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    return out


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return _write_pki(tmp_path_factory.mktemp("pki"))


def _serve(tmp_path, **kwargs):
    server, port = create_server(AgentConfig(port=0, store_dir=tmp_path / "store", **kwargs))
    server.start()
    return server, f"127.0.0.1:{port}"


def test_token_is_required_when_configured(tmp_path, tiny_pte):
    server, target = _serve(tmp_path, token=TOKEN)
    try:
        with AgentClient(target) as anonymous:
            assert anonymous.health()  # health stays open for probes
            with pytest.raises(DeviceAuthError):
                anonymous.get_info()
        with AgentClient(target, token="wrong") as wrong, pytest.raises(DeviceAuthError) as err:
            wrong.has_artifact("0" * 64)
        assert "token" in str(err.value)
        with AgentClient(target, token=TOKEN) as good:
            assert good.get_info().protocol_version == 1
            assert not good.has_artifact("0" * 64)
            stored = good.upload(tiny_pte)
        # the streaming upload and the benchmark are guarded too, not only the unary lookups
        for token in (None, "wrong"):
            with AgentClient(target, token=token) as bad:
                with pytest.raises(DeviceAuthError):
                    bad.upload(b"not stored: refused before the first chunk is kept" * 100)
                with pytest.raises(DeviceAuthError):
                    bad.benchmark(stored.sha256)
        store = tmp_path / "store"
        assert not [p for p in store.rglob("*") if p.is_file() and b"refused before" in p.read_bytes()]
        with AgentClient(target, token=TOKEN) as good:
            assert len(good.benchmark(stored.sha256).latencies_ms) > 0  # the search policy: a short run
    finally:
        stop_server(server, grace=0.2)


def test_tls_with_token_and_mutual_tls(tmp_path, pki):
    tls = TlsConfig(pki["server_cert"], pki["server_key"])
    server, target = _serve(tmp_path, token=TOKEN, tls=tls)
    try:
        with AgentClient(target, token=TOKEN, root_cert=pki["ca_cert"]) as client:
            assert client.get_info().protocol_version == 1
        with AgentClient(target, token=TOKEN, timeout=3) as plaintext, pytest.raises(DeviceUnreachableError):
            plaintext.get_info()
        with AgentClient(target, token=TOKEN, root_cert=pki["ca_cert"], tls_server_name="localhost") as named:
            assert named.get_info().protocol_version == 1
        with AgentClient(target, token=TOKEN, root_cert=pki["ca_cert"], tls_server_name="other.example",
                         timeout=3) as wrong_name, pytest.raises(DeviceUnreachableError):
            wrong_name.get_info()
    finally:
        stop_server(server, grace=0.2)
    mtls = TlsConfig(pki["server_cert"], pki["server_key"], client_ca=pki["ca_cert"])
    server, target = _serve(tmp_path, token=TOKEN, tls=mtls)
    try:
        with AgentClient(target, token=TOKEN, root_cert=pki["ca_cert"], client_cert=pki["client_cert"],
                         client_key=pki["client_key"]) as client:
            assert client.get_info().cpu_count >= 1
        with AgentClient(target, token=TOKEN, root_cert=pki["ca_cert"], timeout=3) as no_cert, \
                pytest.raises((DeviceUnreachableError, DeviceAuthError)):
            no_cert.get_info()
    finally:
        stop_server(server, grace=0.2)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3"])
def test_non_loopback_without_tls_and_token_is_refused(tmp_path, pki, host):
    with pytest.raises(AgentConfigError) as err:
        create_server(AgentConfig(host=host, port=0, store_dir=tmp_path / "store"))
    assert "--tls-cert/--tls-key" in str(err.value) and "--token-file" in str(err.value)
    with pytest.raises(AgentConfigError) as err:
        create_server(AgentConfig(host=host, port=0, store_dir=tmp_path / "store",
                                  tls=TlsConfig(pki["server_cert"], pki["server_key"])))
    assert "--token-file" in str(err.value) and "--tls-cert" not in str(err.value)


def test_serve_cli_refuses_public_address_without_tls(venv_bin, tmp_path):
    proc = subprocess.run([venv_bin / "sculpt-agent", "serve", "--host", "0.0.0.0", "--port", "0",
                           "--store", str(tmp_path / "store")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "refusing to listen" in proc.stderr and "--tls-cert" in proc.stderr and "--token-file" in proc.stderr


def test_search_devices_named_in_a_fleet_file_connect_with_its_token(tmp_path):
    """`search --fleet FILE --device NAME`: the name resolves through the fleet file, with its token."""
    from host.errors import ConfigError
    from host.search.devices import open_devices

    server, target = _serve(tmp_path, token=TOKEN)
    try:
        (tmp_path / "token").write_text(TOKEN + "\n")
        fleet = tmp_path / "fleet.toml"
        fleet.write_text(f'[[device]]\nname = "bench-1"\naddress = "grpc://{target}"\ntoken_file = "token"\n')
        with open_devices(["bench-1"], fleet) as (device,):
            assert device.name == "bench-1" and device.fingerprint
        # the same address without the fleet's token is refused
        with pytest.raises(DeviceAuthError), open_devices([f"grpc://{target}"]):
            pass
        with pytest.raises(ConfigError, match="not a device of the fleet file"), open_devices(["bench-2"], fleet):
            pass
    finally:
        stop_server(server, grace=0.2)

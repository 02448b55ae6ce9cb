"""The SSRF guard on its own: address spellings, the block list, the allow list, and a
transport that connects only to pinned addresses (with the name kept for TLS)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from velocitymesh.errors import BlockedError, ConfigurationError, StepError
from velocitymesh.workspace.netguard import AllowList, IPAddress, NetGuard, blocked_reason, parse_ip


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.000.000.001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("10.1", "10.0.0.1"),
        ("8.8.8.8", "8.8.8.8"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("[0:0:0:0:0:ffff:7f00:1]", "::ffff:7f00:1"),
        ("fe80::1%eth0", "fe80::1%eth0"),
    ],
)
def test_parse_ip_accepts_every_spelling(host: str, expected: str) -> None:
    assert parse_ip(host) == ipaddress.ip_address(expected)


@pytest.mark.parametrize(
    "host", ["example.com", "127.0.0.1.example.com", "1.2.3.4.5", "256.1.1.1", "1.2.65536", "08.0.0.1",
             "0x", "0xg.1", "", "..", "1..1", "[::1", "::g"],
)
def test_parse_ip_leaves_names_alone(host: str) -> None:
    assert parse_ip(host) is None


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.255.255.254", "a loopback address"),
        ("10.9.8.7", "a private address"),
        ("172.31.255.255", "a private address"),
        ("192.168.0.1", "a private address"),
        ("100.64.0.1", "a carrier-grade NAT (shared) address"),
        ("100.100.100.200", "a carrier-grade NAT (shared) address"),  # Alibaba's metadata
        ("169.254.169.254", "the cloud metadata address"),
        ("169.254.1.1", "a link-local address"),
        ("0.0.0.0", "an unspecified ('this network') address"),
        ("224.0.0.251", "a multicast address"),
        ("255.255.255.255", "the broadcast address"),
        ("240.0.0.1", "a reserved address"),
        ("198.18.0.1", "a reserved (benchmarking) address"),
        ("::", "the unspecified address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "an IPv4-mapped address of 127.0.0.1, a loopback address"),
        ("::ffff:8.8.8.8", "an IPv4-mapped address of 8.8.8.8"),
        ("::7f00:1", "an IPv4-compatible address of 127.0.0.1, a loopback address"),
        ("64:ff9b::a9fe:a9fe", "a NAT64 address of 169.254.169.254, the cloud metadata address"),
        ("2002:a00:1::", "a 6to4 address of 10.0.0.1, a private address"),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "a Teredo address of 127.0.0.1, a loopback address"),
        ("fd00:ec2::254", "a private (unique local) address"),  # AWS IMDS over IPv6
        ("fdaa::3", "a private (unique local) address"),  # Fly.io private network
        ("fe80::1", "a link-local address"),
        ("fe80::1%eth0", "a link-local address"),
        ("ff02::1", "a multicast address"),
        ("2001:db8::1", "a documentation address"),
    ],
)
def test_blocked_reason(ip: str, reason: str) -> None:
    assert blocked_reason(ipaddress.ip_address(ip)) == reason


@pytest.mark.parametrize(
    "ip", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111", "2a00:1450:4007:80e::200e",
           "64:ff9b::808:808", "2002:808:808::1"],
)
def test_public_addresses_pass(ip: str) -> None:
    assert blocked_reason(ipaddress.ip_address(ip)) is None


def test_allow_list_entries() -> None:
    allow = AllowList.from_entries(["API.Internal.", "*.corp.example", "10.1.0.0/16", "127.0.0.2", "::1",
                                    "münchen.test", " "])
    assert allow.allows_name("api.internal") and allow.allows_name("API.INTERNAL.")
    assert allow.allows_name("x.corp.example") and allow.allows_name("a.b.corp.example")
    assert not allow.allows_name("corp.example") and not allow.allows_name("evilcorp.example")
    assert allow.allows_name("xn--mnchen-3ya.test")
    assert allow.allows_ip(ipaddress.ip_address("10.1.200.3"))
    assert not allow.allows_ip(ipaddress.ip_address("10.2.0.1"))
    assert allow.allows_ip(ipaddress.ip_address("127.0.0.2"))
    assert not allow.allows_ip(ipaddress.ip_address("127.0.0.1"))
    assert allow.allows_ip(ipaddress.ip_address("::ffff:10.1.0.1"))  # mapped form of an allowed v4
    assert allow.allows_ip(ipaddress.ip_address("::1"))


def test_allow_list_rejects_garbage() -> None:
    with pytest.raises(ConfigurationError, match="VM_HTTP_ALLOW entry 'not a host!'"):
        AllowList.from_entries(["not a host!"])


def test_allowed_spellings() -> None:
    guard = NetGuard(["127.0.0.0/8", "localhost"])
    for url in ["http://2130706433/", "http://0x7f.1/", "http://127.1/", "http://localhost/"]:
        guard.parse_url(url)
    with pytest.raises(BlockedError):
        guard.parse_url("http://[::1]/")  # ::1 is not 127.0.0.0/8


async def test_pin_checks_every_resolved_address() -> None:
    async def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("fd00::7")]

    guard = NetGuard([], resolver=resolver)
    with pytest.raises(BlockedError, match=r"example.test \(it resolves to fd00::7\)"):
        await guard.pin("https://example.test/")
    assert guard.pins == {}

    async def nothing(host: str, port: int) -> list[IPAddress]:
        return []

    with pytest.raises(StepError, match="resolved to no address"):
        await NetGuard([], resolver=nothing).pin("https://example.test/")


async def test_pin_records_checked_addresses() -> None:
    seen: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> list[IPAddress]:
        seen.append((host, port))
        return [ipaddress.ip_address("93.184.216.34")]

    guard = NetGuard([], resolver=resolver)
    url = await guard.pin("https://Example.Test./path")
    assert url.host == "example.test."
    assert seen == [("example.test", 443)]
    assert guard.pins == {"example.test": (ipaddress.ip_address("93.184.216.34"),)}
    with pytest.raises(BlockedError, match="loopback"):
        await guard.pin("http://2130706433:8080/")
    assert list(guard.pins) == ["example.test"]


async def test_transport_refuses_unpinned_hosts() -> None:
    guard = NetGuard(["127.0.0.1"])
    async with httpx.AsyncClient(transport=guard.transport()) as client:
        with pytest.raises(BlockedError, match="was not checked"):
            await client.get("http://127.0.0.1:9/")


async def test_system_resolver_failure_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_such_name(self: Any, host: str, *args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", no_such_name)  # no real DNS in tests
    guard = NetGuard([])
    with pytest.raises(StepError, match=r"could not resolve host 'no-such-host\.invalid'") as e:
        await guard.pin("http://no-such-host.invalid/")
    assert not isinstance(e.value, BlockedError)
    assert e.value.retryable is False


# --- TLS: connect to the pinned IP, verify the certificate of the name ------------------


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    cert_file, key_file = _self_signed(tmp_path, "pinned.test")
    info: dict[str, Any] = {"sni": [], "hosts": [], "cert": cert_file}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            info["hosts"].append(self.headers.get("Host"))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    context.sni_callback = lambda sock, name, ctx: info["sni"].append(name)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    info["port"] = server.server_address[1]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield info
    server.shutdown()
    server.server_close()


async def test_tls_keeps_the_name_while_connecting_to_the_pinned_ip(tls_server: dict[str, Any]) -> None:
    async def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]

    guard = NetGuard(["127.0.0.1"], resolver=resolver)
    client_context = ssl.create_default_context(cafile=str(tls_server["cert"]))
    port = tls_server["port"]
    async with httpx.AsyncClient(transport=guard.transport(client_context)) as client:
        url = await guard.pin(f"https://pinned.test:{port}/")
        response = await client.get(url)
        assert response.status_code == 200 and response.text == "ok"
        assert tls_server["sni"] == ["pinned.test"]
        assert tls_server["hosts"] == [f"pinned.test:{port}"]

        # Same address, another name: the certificate is checked against the name.
        url = await guard.pin(f"https://other.test:{port}/")
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get(url)

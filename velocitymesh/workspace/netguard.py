"""The SSRF guard of the ``http`` step: which addresses a workflow may reach, and a
transport that can only connect to addresses the guard has checked.

A URL is checked in two stages. ``NetGuard.parse_url`` (no I/O) refuses non-http(s)
schemes, hosts that *are* a blocked address in any spelling ``inet_aton`` accepts
(``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``, ``[::ffff:127.0.0.1]``) and
blocked names (``localhost``, cloud metadata names). ``NetGuard.pin`` then resolves
the host once, refuses it if *any* address is blocked, and records the checked
addresses for that host. The transport from ``NetGuard.transport()`` dials only
recorded addresses, never the name, so a DNS answer that changes between check and
connect (rebinding) cannot redirect the connection; the URL keeps the host name, so
the Host header, SNI and certificate checks stay those of the name.

``settings.http_allow`` (``VM_HTTP_ALLOW``) lifts the block for a host name
(``api.internal``, ``*.corp.example``), an IP or a CIDR (``10.1.0.0/16``).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

from velocitymesh.errors import BlockedError, ConfigurationError, StepError

if TYPE_CHECKING:
    from velocitymesh.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

__all__ = [
    "AllowList",
    "IPAddress",
    "NetGuard",
    "PinnedTransport",
    "Resolver",
    "blocked_reason",
    "parse_ip",
    "system_resolve",
]

ALLOWED_SCHEMES = ("http", "https")

# Names that reach cloud instance metadata (credentials!) without looking like an address.
METADATA_HOSTS = frozenset({
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.azure.internal",
    "metadata.tencentyun.com",
    "metadata.packet.net",
    "metadata.platformequinix.com",
})

_V4_BLOCKS: list[tuple[ipaddress.IPv4Network, str]] = [
    (ipaddress.IPv4Network(net), reason)
    for net, reason in [
        ("0.0.0.0/8", "an unspecified ('this network') address"),
        ("10.0.0.0/8", "a private address"),
        ("100.64.0.0/10", "a carrier-grade NAT (shared) address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.169.254/32", "the cloud metadata address"),
        ("169.254.0.0/16", "a link-local address"),
        ("172.16.0.0/12", "a private address"),
        ("192.0.0.0/24", "a reserved (IETF protocol) address"),
        ("192.0.2.0/24", "a documentation address"),
        ("192.88.99.0/24", "a reserved (6to4 relay) address"),
        ("192.168.0.0/16", "a private address"),
        ("198.18.0.0/15", "a reserved (benchmarking) address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "the broadcast address"),
        ("240.0.0.0/4", "a reserved address"),
    ]
]

_V6_BLOCKS: list[tuple[ipaddress.IPv6Network, str]] = [
    (ipaddress.IPv6Network(net), reason)
    for net, reason in [
        ("100::/64", "a reserved (discard-only) address"),
        ("64:ff9b:1::/48", "a private NAT64 address"),
        ("2001:db8::/32", "a documentation address"),
        ("fc00::/7", "a private (unique local) address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
    ]
]

_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def parse_ip(host: str) -> IPAddress | None:
    """The address a URL host denotes, or None when it is a name.

    Accepts every IPv4 spelling the C resolver accepts (``inet_aton``): 1 to 4 parts,
    each decimal, octal (leading 0) or hex (0x), the last filling the remaining bytes
    — so ``2130706433``, ``017700000001``, ``0x7f.1`` and ``127.1`` are all 127.0.0.1.
    Brackets and trailing dots are ignored.
    """
    host = host.strip().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return None
    return _parse_ipv4_loose(host)


def _parse_ipv4_loose(host: str) -> ipaddress.IPv4Address | None:
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers: list[int] = []
    for part in parts:
        if part[:2].lower() == "0x":
            digits, base, alphabet = part[2:], 16, "0123456789abcdefABCDEF"
        elif len(part) > 1 and part[0] == "0":
            digits, base, alphabet = part[1:], 8, "01234567"
        else:
            digits, base, alphabet = part, 10, "0123456789"
        if not digits or any(c not in alphabet for c in digits):
            return None
        numbers.append(int(digits, base))
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = last
    for i, n in enumerate(head):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def blocked_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be reached (``"a private address"``…), or None when it is public."""
    if isinstance(ip, ipaddress.IPv4Address):
        for net4, reason in _V4_BLOCKS:
            if ip in net4:
                return reason
        return None if ip.is_global else "a non-public address"

    if ip.scope_id:  # fe80::1%eth0: classify the address, not the interface
        ip = ipaddress.IPv6Address(int(ip))
    if ip == ipaddress.IPv6Address("::"):
        return "the unspecified address"
    if ip == ipaddress.IPv6Address("::1"):
        return "a loopback address"
    # IPv6 forms that carry an IPv4 address: connecting to them may reach that IPv4 host.
    if ip.ipv4_mapped is not None:
        return _embedding("an IPv4-mapped address", ip.ipv4_mapped, always=True)
    if ip in _V4_COMPATIBLE:
        return _embedding("an IPv4-compatible address", _low32(ip), always=True)
    embedded: list[tuple[str, ipaddress.IPv4Address]] = []
    if ip in _NAT64:
        embedded.append(("a NAT64 address", _low32(ip)))
    if ip.sixtofour is not None:
        embedded.append(("a 6to4 address", ip.sixtofour))
    if ip.teredo is not None:
        embedded += [("a Teredo address", inner) for inner in ip.teredo]
    for kind, inner in embedded:
        embedded_reason = _embedding(kind, inner)
        if embedded_reason:
            return embedded_reason
    for net6, reason6 in _V6_BLOCKS:
        if ip in net6:
            return reason6
    return None if ip.is_global else "a non-public address"


def _low32(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)


def _embedding(kind: str, inner: ipaddress.IPv4Address, *, always: bool = False) -> str | None:
    inner_reason = blocked_reason(inner)
    if inner_reason:
        return f"{kind} of {inner}, {inner_reason}"
    return f"{kind} of {inner}" if always else None


def _name_reason(name: str) -> str | None:
    if name == "localhost" or name.endswith(".localhost"):
        return "a loopback name"
    if name in METADATA_HOSTS:
        return "a cloud metadata name"
    return None


def _normalize_name(name: str) -> str:
    """A host name as httpx sends it: IDNA-encoded, lower case, without trailing dots."""
    url = httpx.URL(f"http://{name}/")
    host = url.raw_host.decode("ascii").lower().rstrip(".")
    if not _NAME.fullmatch(host) or url.port is not None or url.path != "/":
        raise httpx.InvalidURL(f"not a host name: {name!r}")
    return host


@dataclass(frozen=True)
class AllowList:
    """Parsed ``VM_HTTP_ALLOW``: exact names, ``*.suffix`` names, and networks."""

    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> AllowList:
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            ip = parse_ip(entry)
            if ip is not None:
                networks.append(ipaddress.ip_network(ip))
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            try:
                if entry.startswith("*."):
                    suffixes.append("." + _normalize_name(entry[2:]))
                else:
                    names.add(_normalize_name(entry))
            except httpx.InvalidURL:
                raise ConfigurationError(
                    f"VM_HTTP_ALLOW entry {raw!r} is not a host name, IP address or CIDR",
                    hint="use entries like api.internal, *.corp.example, 10.0.0.5 or 10.1.0.0/16",
                ) from None
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def allows_name(self, name: str) -> bool:
        name = name.lower().rstrip(".")
        return name in self.names or any(name.endswith(s) for s in self.suffixes)

    def allows_ip(self, ip: IPAddress) -> bool:
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.scope_id:
                candidates.append(ipaddress.IPv6Address(int(ip)))
            if ip.ipv4_mapped is not None:
                candidates.append(ip.ipv4_mapped)
        return any(c in net for c in candidates for net in self.networks if c.version == net.version)


async def system_resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the system resolver gives for ``host``, in its order, without repeats."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        error = StepError(
            f"could not resolve host {host!r}: {e.strerror}",
            hint="check the host name in the URL",
        )
        error.retryable = e.errno == socket.EAI_AGAIN
        raise error from e
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        ip = ipaddress.ip_address(sockaddr[0])
        if ip not in addresses:
            addresses.append(ip)
    return addresses


def _key(host: str) -> str:
    return host.lower().strip("[]").rstrip(".")


def _display(url: httpx.URL) -> str:
    """A URL as shown in messages: without user info or query (either may carry secrets)."""
    return str(url.copy_with(username=None, password=None, query=None, fragment=None))


def _invalid(message: str, hint: str) -> StepError:
    """A URL that cannot work: retrying the step will not help."""
    error = StepError(message, hint=hint)
    error.retryable = False
    return error


def _blocked(what: str, reason: str, allow_as: list[str]) -> BlockedError:
    hint = " or ".join(dict.fromkeys(allow_as))
    return BlockedError(
        f"the http step refuses {what}: it is {reason}",
        hint=f"add {hint} to VM_HTTP_ALLOW to allow it",
    )


class NetGuard:
    """Checks URLs against the block list and pins each checked host to its addresses.

    One guard serves one step run: its pins belong to the transport it made.
    """

    def __init__(self, allow: AllowList | Iterable[str] = (), resolver: Resolver | None = None) -> None:
        self.allow = allow if isinstance(allow, AllowList) else AllowList.from_entries(allow)
        self._resolve: Resolver = resolver or system_resolve
        self._pins: dict[str, tuple[IPAddress, ...]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, resolver: Resolver | None = None) -> NetGuard:
        return cls(AllowList.from_entries(settings.http_allow), resolver)

    @property
    def pins(self) -> dict[str, tuple[IPAddress, ...]]:
        """Host (as the transport sees it) → the checked addresses it may connect to."""
        return dict(self._pins)

    def parse_url(self, url: str | httpx.URL) -> httpx.URL:
        """Parse ``url`` and refuse it when its scheme or literal host is blocked. No I/O."""
        if isinstance(url, httpx.URL):
            parsed = url
        else:
            try:
                parsed = httpx.URL(url)
            except httpx.InvalidURL as e:
                # httpx rejects some spellings the C resolver would accept (0177.0.0.1):
                # classify the host anyway so the user learns what it points at.
                self._check_lenient(url)
                raise _invalid(f"invalid URL {url!r}: {e}", "check the step's url") from e
            if parsed.scheme == "" and "://" not in url:
                raise _invalid(f"the URL {url!r} has no scheme", "write it as https://… or http://…")
        if parsed.scheme not in ALLOWED_SCHEMES:
            raise BlockedError(
                f"the http step refuses {parsed.scheme}: URLs ({_display(parsed)}); "
                "it only fetches http:// and https:// URLs",
                hint="use an http:// or https:// URL; other schemes cannot be allowed",
            )
        host = parsed.raw_host.decode("ascii")
        if not host:
            raise _invalid(f"the URL {_display(parsed)} has no host", "write it as https://host/path")
        self._check_host(host)
        return parsed

    def _check_lenient(self, url: str) -> None:
        try:
            host = urllib.parse.urlsplit(url.strip()).hostname
        except ValueError:
            return
        if host:
            self._check_host(host)

    def _check_host(self, host: str) -> None:
        name = _key(host)
        if self.allow.allows_name(name):
            return
        ip = parse_ip(name)
        if ip is not None:
            reason = blocked_reason(ip)
            if reason and not self.allow.allows_ip(ip):
                what = str(ip) if name == str(ip) else f"{host} ({ip})"
                raise _blocked(what, reason, [str(ip)])
            return
        reason = _name_reason(name)
        if reason:
            raise _blocked(name, reason, [name])
        if not _NAME.fullmatch(name):
            raise _invalid(f"{host!r} is not a valid host name", "check the host in the step's url")

    async def pin(self, url: str | httpx.URL) -> httpx.URL:
        """Check ``url``, resolve its host once, check every address, and pin the host to them.

        Raises BlockedError when the scheme, the host or any resolved address is blocked.
        """
        parsed = self.parse_url(url)
        host = parsed.raw_host.decode("ascii")
        name = _key(host)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        literal = parse_ip(name)
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            addresses = await self._resolve(name, port)
            if not addresses:
                raise _invalid(f"host {name!r} resolved to no address", "check the host name in the URL")
            if not self.allow.allows_name(name):
                for ip in addresses:
                    reason = blocked_reason(ip)
                    if reason and not self.allow.allows_ip(ip):
                        raise _blocked(f"{name} (it resolves to {ip})", reason, [name, str(ip)])
        self._pins[name] = tuple(addresses)
        return parsed

    def transport(self, ssl_context: ssl.SSLContext | None = None) -> PinnedTransport:
        """An httpx transport that connects only to the addresses this guard pinned."""
        return PinnedTransport(self._pins, ssl_context=ssl_context)


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Dials the pinned addresses of a host instead of resolving its name again."""

    def __init__(self, pins: dict[str, tuple[IPAddress, ...]]) -> None:
        self._pins = pins
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = self._pins.get(_key(host))
        if not addresses:
            raise BlockedError(
                f"the http step refuses to connect to {host}: the address was not checked",
                hint="this is a bug: every host must go through NetGuard.pin first",
            )
        error: Exception | None = None
        for ip in addresses:  # the resolver's order; every one of them was checked
            try:
                return await self._inner.connect_tcp(
                    str(ip), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                error = e
        assert error is not None
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedError("the http step refuses unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle costs ~50 ms; one context serves every request of the process.
    return httpx.create_ssl_context(trust_env=False)


class PinnedTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` whose connections go only to pinned addresses.

    No proxies (``trust_env`` off): a proxy would resolve the name itself.
    """

    def __init__(
        self, pins: dict[str, tuple[IPAddress, ...]], *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        context = ssl_context or _default_ssl_context()
        super().__init__(verify=context, trust_env=False)
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            # Fail closed if a future httpx stops keeping its pool here.
            raise RuntimeError("unsupported httpx version: AsyncHTTPTransport has no _pool to replace")
        # httpx has no public way to give its pool a network backend, so the pool it
        # built is replaced by the same pool on the pinning backend.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=10,
            max_keepalive_connections=10,
            keepalive_expiry=5.0,
            network_backend=_PinnedBackend(pins),
        )

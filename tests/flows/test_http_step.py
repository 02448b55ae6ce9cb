"""The http step against local servers only: 127.0.0.1, 127.0.0.2 and ::1 share one port,
so a test can allow one loopback address and prove another was never reached."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import ValidationError

from velocitymesh.errors import BlockedError, NotFoundError, StepError, StepTimeout
from velocitymesh.flows.steps import http
from velocitymesh.flows.steps.base import StepContext, StepLogger
from velocitymesh.settings import Settings
from velocitymesh.workspace import netguard

# --- local servers -------------------------------------------------------------------


@dataclass
class Servers:
    port: int
    requests: list[dict[str, Any]] = field(default_factory=list)

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def reached(self, address: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["local"] == address]


def _handler(servers: Servers) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: bytes, ctype: str = "application/json", **headers: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k.replace("_", "-"), v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            local = self.connection.getsockname()[0]
            record = {
                "method": self.command, "path": parts.path, "query": query, "body": body, "local": local,
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
            servers.requests.append(record)
            path = parts.path
            if path == "/json":
                self._reply(200, b'{"hello": "world", "n": [1, 2]}')
            elif path == "/echo":
                self._reply(200, json.dumps(record).encode())
            elif path == "/text":
                self._reply(200, "plain text ✓".encode(), "text/plain; charset=utf-8")
            elif path == "/notjson":
                self._reply(200, b"<html>nope</html>")
            elif path.startswith("/status/"):
                status = int(path.rsplit("/", 1)[1])
                sent = self.headers.get("Authorization", "")
                self._reply(status, f"error {status}; you sent {sent!r}".encode(), "text/plain")
            elif path == "/redirect":
                code = int(query.get("code", ["302"])[0])
                self._reply(code, b"", "text/plain", Location=query["to"][0])
            elif path == "/loop":
                self._reply(302, b"", "text/plain", Location="/loop")
            elif path == "/big":
                self._reply(200, b"a" * int(query["n"][0]), "text/plain")
            elif path == "/stream":  # no Content-Length: the cap must stop the stream itself
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for _ in range(int(query["chunks"][0])):
                        chunk = b"b" * 65536
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass
            elif path == "/slow":
                time.sleep(float(query["s"][0]))
                self._reply(200, b"{}")
            else:
                self._reply(404, b"not here", "text/plain")

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that stop reading (body cap, timeout) are expected here


class _Server6(_Server):
    address_family = socket.AF_INET6


def _start(servers: Servers, host: str, port: int) -> ThreadingHTTPServer:
    cls = _Server6 if ":" in host else _Server
    server = cls((host, port), _handler(servers))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return server


@pytest.fixture
def servers() -> Iterator[Servers]:
    for _ in range(20):  # find a port free on all three addresses
        first = _Server(("127.0.0.1", 0), BaseHTTPRequestHandler)
        port = first.server_address[1]
        first.server_close()
        box = Servers(port)
        started: list[ThreadingHTTPServer] = []
        try:
            for host in ("127.0.0.1", "127.0.0.2", "::1"):
                started.append(_start(box, host, port))
        except OSError:
            for s in started:
                s.shutdown()
                s.server_close()
            continue
        yield box
        for s in started:
            s.shutdown()
            s.server_close()
        return
    pytest.fail("no port free on 127.0.0.1, 127.0.0.2 and ::1")


# --- helpers -------------------------------------------------------------------------


def make_ctx(settings: Settings, allow: list[str] | None = None, secrets: dict[str, str] | None = None,
             **changes: Any) -> StepContext:
    settings = settings.model_copy(update={"http_allow": allow or [], **changes})
    return StepContext(run_id="run1", step_id="call", workflow="wf", settings=settings, logger=StepLogger(),
                       secrets=secrets or {})


async def call(ctx: StepContext, **config: Any) -> dict[str, Any]:
    result = await http.run(http.Config.model_validate(config), ctx)
    return result.output


def log_text(ctx: StepContext) -> str:
    return "\n".join(line.message for line in ctx.logger.lines)


@pytest.fixture
def no_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Any name lookup fails the test: blocked URLs must be refused before DNS."""
    looked_up: list[str] = []

    async def resolve(host: str, port: int) -> list[netguard.IPAddress]:
        looked_up.append(host)
        raise AssertionError(f"resolved {host!r}")

    monkeypatch.setattr(netguard, "system_resolve", resolve)
    return looked_up


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]) -> list[str]:
    """Resolve names from ``answers``: each lookup of a name takes its next answer (the last repeats)."""
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[netguard.IPAddress]:
        calls.append(host)
        seq = answers[host]
        answer = seq[min(calls.count(host), len(seq)) - 1]
        return [netguard.parse_ip(a) for a in answer]  # type: ignore[misc]

    monkeypatch.setattr(netguard, "system_resolve", resolve)
    return calls


# --- requests that work --------------------------------------------------------------


async def test_get_json(servers: Servers, settings: Settings) -> None:
    ctx = make_ctx(settings, ["127.0.0.1"])
    out = await call(ctx, url=servers.url("/json"))
    assert out["status"] == 200
    assert out["json"] == {"hello": "world", "n": [1, 2]}
    assert "text" not in out
    assert out["headers"]["content-type"] == "application/json"
    assert out["url"] == servers.url("/json")
    assert f"GET {servers.url('/json')} → 200" in log_text(ctx)


async def test_post_json_query_and_headers(servers: Servers, settings: Settings) -> None:
    ctx = make_ctx(settings, ["127.0.0.1"])
    out = await call(ctx, url=servers.url("/echo?a=1"), method="post", json={"x": [1, "é"]},
                     query={"b": 2, "flag": True, "many": ["p", "q"], "skip": None, "obj": {"k": 1}},
                     headers={"X-Trace": "abc"})
    seen = out["json"]
    assert seen["method"] == "POST"
    assert json.loads(seen["body"]) == {"x": [1, "é"]}
    assert seen["headers"]["content-type"] == "application/json"
    assert seen["headers"]["x-trace"] == "abc"
    assert seen["query"] == {
        "a": ["1"], "b": ["2"], "flag": ["true"], "many": ["p", "q"], "obj": ['{"k": 1}'],
    }


async def test_text_body_and_text_response(servers: Servers, settings: Settings) -> None:
    ctx = make_ctx(settings, ["127.0.0.1"])
    out = await call(ctx, url=servers.url("/echo"), method="PUT", body="raw text",
                     headers={"Content-Type": "text/plain"}, response="text")
    assert out["json"] is None
    assert json.loads(out["text"])["body"] == "raw text"
    out = await call(ctx, url=servers.url("/text"))
    assert out == {**out, "json": None, "text": "plain text ✓"}


async def test_response_modes(servers: Servers, settings: Settings) -> None:
    ctx = make_ctx(settings, ["127.0.0.1"])
    out = await call(ctx, url=servers.url("/notjson"))  # says JSON, is not: kept as text
    assert out["json"] is None and out["text"] == "<html>nope</html>"
    assert "is not; kept as text" in log_text(ctx)
    with pytest.raises(StepError, match="did not return JSON") as e:
        await call(ctx, url=servers.url("/text"), response="json")
    assert e.value.retryable is False
    out = await call(ctx, url=servers.url("/json"), method="HEAD")
    assert out["status"] == 200 and out["json"] is None


async def test_bearer_auth_from_secret_never_logged(servers: Servers, settings: Settings) -> None:
    ctx = make_ctx(settings, ["127.0.0.1"], secrets={"api": "s3cr3t-token"})
    out = await call(ctx, url=servers.url("/echo"), auth={"bearer": "api"})
    assert out["json"]["headers"]["authorization"] == "Bearer s3cr3t-token"
    assert "s3cr3t" not in log_text(ctx)
    # a server that echoes the credential in an error: the excerpt hides it
    with pytest.raises(StepError) as e:
        await call(ctx, url=servers.url("/status/401"), auth={"bearer": "api"})
    assert "s3cr3t" not in str(e.value) and "***" in str(e.value)


async def test_basic_and_header_auth(servers: Servers, settings: Settings) -> None:
    ctx = make_ctx(settings, ["127.0.0.1"], secrets={"pw": "hunter2", "key": "k-123"})
    basic = {"username": "ann", "password_secret": "pw"}
    out = await call(ctx, url=servers.url("/echo"), auth={"basic": basic})
    assert out["json"]["headers"]["authorization"] == "Basic YW5uOmh1bnRlcjI="
    out = await call(ctx, url=servers.url("/echo"), auth={"header": {"name": "X-Api-Key", "secret": "key"}})
    assert out["json"]["headers"]["x-api-key"] == "k-123"
    with pytest.raises(NotFoundError, match="secrets set missing"):
        await call(ctx, url=servers.url("/echo"), auth={"bearer": "missing"})


async def test_credentials_in_url_are_refused(servers: Servers, settings: Settings) -> None:
    ctx = make_ctx(settings, ["127.0.0.1"])
    with pytest.raises(StepError, match="carries credentials") as e:
        await call(ctx, url=f"http://ann:pw@127.0.0.1:{servers.port}/echo")
    assert servers.requests == [] and e.value.retryable is False
    assert "pw" not in str(e.value)


@pytest.mark.parametrize("url", ["example.com/path", "http:///nohost", "http://[::1/", "http://a b/"])
async def test_unusable_urls_are_not_retried(url: str, settings: Settings, no_dns: list[str]) -> None:
    with pytest.raises(StepError) as e:
        await call(make_ctx(settings), url=url)
    assert e.value.retryable is False and not isinstance(e.value, BlockedError)


async def test_redirects_are_followed(servers: Servers, settings: Settings) -> None:
    ctx = make_ctx(settings, ["127.0.0.1"])
    out = await call(ctx, url=servers.url("/redirect?to=/json"))
    assert out["status"] == 200 and out["json"]["hello"] == "world"
    assert out["url"] == servers.url("/json")
    # 303 after a POST: the next request is a GET without the body
    out = await call(ctx, url=servers.url("/redirect?to=/echo&code=303"), method="POST", json={"a": 1})
    assert out["json"]["method"] == "GET" and out["json"]["body"] == ""
    out = await call(ctx, url=servers.url("/redirect?to=/echo&code=302"), method="PUT", body="x")
    assert out["json"]["method"] == "GET" and out["json"]["body"] == ""
    # 307 keeps the method and body
    out = await call(ctx, url=servers.url("/redirect?to=/echo&code=307"), method="POST", json={"a": 1})
    assert out["json"]["method"] == "POST" and json.loads(out["json"]["body"]) == {"a": 1}


async def test_redirect_limit_and_no_follow(servers: Servers, settings: Settings) -> None:
    ctx = make_ctx(settings, ["127.0.0.1"])
    with pytest.raises(StepError, match="redirected more than 3 times") as e:
        await call(ctx, url=servers.url("/loop"), max_redirects=3)
    assert e.value.retryable is False
    assert len(servers.requests) == 4
    with pytest.raises(StepError, match="returned 302"):
        await call(ctx, url=servers.url("/redirect?to=/json"), follow_redirects=False)
    out = await call(ctx, url=servers.url("/redirect?to=/json"), follow_redirects=False, expect_status=[302])
    assert out["status"] == 302 and out["headers"]["location"] == "/json"


async def test_credentials_stay_with_the_first_origin(servers: Servers, settings: Settings) -> None:
    ctx = make_ctx(settings, ["127.0.0.1", "127.0.0.2"], secrets={"api": "tok"})
    target = servers.url("/echo", host="127.0.0.2")
    out = await call(ctx, url=servers.url(f"/redirect?to={target}"), auth={"bearer": "api"},
                     headers={"Cookie": "sid=1", "X-Other": "kept"})
    first, second = servers.requests
    assert first["headers"]["authorization"] == "Bearer tok" and first["local"] == "127.0.0.1"
    assert second["local"] == "127.0.0.2"
    assert "authorization" not in second["headers"] and "cookie" not in second["headers"]
    assert out["json"]["headers"]["x-other"] == "kept"


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (503, True), (429, True), (404, False),
                                                   (400, False), (403, False)])
async def test_error_statuses(servers: Servers, settings: Settings, status: int, retryable: bool) -> None:
    ctx = make_ctx(settings, ["127.0.0.1"])
    with pytest.raises(StepError, match=f"returned {status}") as e:
        await call(ctx, url=servers.url(f"/status/{status}"))
    assert e.value.retryable is retryable
    assert f"error {status}" in str(e.value)  # a short excerpt of the body
    assert not isinstance(e.value, BlockedError)


async def test_expect_status(servers: Servers, settings: Settings) -> None:
    ctx = make_ctx(settings, ["127.0.0.1"])
    out = await call(ctx, url=servers.url("/status/404"), expect_status=[404])
    assert out["status"] == 404 and out["text"].startswith("error 404")
    with pytest.raises(StepError, match="expects 201"):
        await call(ctx, url=servers.url("/json"), expect_status=[201])


async def test_body_cap(servers: Servers, settings: Settings) -> None:
    ctx = make_ctx(settings, ["127.0.0.1"], http_max_bytes=100_000)
    out = await call(ctx, url=servers.url("/big?n=100000"))
    assert len(out["text"]) == 100_000
    with pytest.raises(StepError, match="larger than 100000 bytes") as e:
        await call(ctx, url=servers.url("/big?n=100001"))  # refused on Content-Length
    assert e.value.retryable is False and "VM_HTTP_MAX_BYTES" in str(e.value)
    started = time.monotonic()
    with pytest.raises(StepError, match="larger than 100000 bytes"):
        await call(ctx, url=servers.url("/stream?chunks=2000"))  # 128 MiB, chunked: stopped early
    assert time.monotonic() - started < 5


async def test_timeout(servers: Servers, settings: Settings) -> None:
    ctx = make_ctx(settings, ["127.0.0.1"])
    started = time.monotonic()
    with pytest.raises(StepTimeout, match=r"timed out|longer than") as e:
        await call(ctx, url=servers.url("/slow?s=3"), timeout=0.3)
    assert time.monotonic() - started < 2
    assert e.value.retryable is True


async def test_connection_refused_is_retryable(settings: Settings) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = make_ctx(settings, ["127.0.0.1"])
    with pytest.raises(StepError, match="could not connect") as e:
        await call(ctx, url=f"http://127.0.0.1:{port}/")
    assert e.value.retryable is True


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="either json or body"):
        http.Config.model_validate({"url": "http://x", "json": {}, "body": "b"})
    with pytest.raises(ValidationError):
        http.Config.model_validate({"url": "http://x", "method": "FETCH"})
    with pytest.raises(ValidationError, match="exactly one"):
        auth = {"bearer": "a", "header": {"name": "n", "secret": "s"}}
        http.Config.model_validate({"url": "http://x", "auth": auth})
    with pytest.raises(ValidationError):
        http.Config.model_validate({"url": "http://x", "unknown": 1})
    assert http.Config.model_validate({"url": "http://x", "method": "post"}).method == "POST"
    assert http.Config.model_validate({"url": "http://x", "json": [1]}).json_body == [1]


def test_static_check() -> None:
    assert http.check({"url": "https://api.example.com/x"}) == []
    assert http.check({"url": "{{ inputs.url }}"}) == []
    [(path, message, hint)] = http.check({"url": "file:///etc/passwd"})
    assert path == "url" and "http(s)" in message and hint
    [(_, message, _)] = http.check({"url": "https://ann:pw@api.example.com/"})
    assert "credentials" in message


# --- SSRF ------------------------------------------------------------------------------

SSRF_CORPUS = [
    "http://127.0.0.1:{port}/",
    "https://127.0.0.1:{port}/",
    "http://localhost:{port}/",
    "http://LOCALHOST.:{port}/",
    "http://api.localhost:{port}/",
    "http://[::1]:{port}/",
    "http://[::]:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://[0:0:0:0:0:ffff:7f00:1]:{port}/",
    "http://[::ffff:7f00:1]:{port}/",
    "http://[::127.0.0.1]:{port}/",
    "http://[::ffff:a9fe:a9fe]/latest/meta-data/",
    "http://[2002:7f00:1::]:{port}/",
    "http://[64:ff9b::7f00:1]:{port}/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://169.254.169.254./latest/meta-data/",
    "http://0251.0376.0251.0376/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://metadata/computeMetadata/v1/",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://0.0.0.0:{port}/",
    "http://0:{port}/",
    "http://2130706433:{port}/",
    "http://0177.0.0.1:{port}/",
    "http://127.000.000.001:{port}/",
    "http://0x7f000001:{port}/",
    "http://0x7f.1:{port}/",
    "http://127.1:{port}/",
    "http://017700000001:{port}/",
    "http://127.0.0.1.:{port}/",
    "http://user@127.0.0.1:{port}/",
    "http://1.1.1.1@127.0.0.1:{port}/",
    "http://user:pass@127.0.0.1:{port}/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[fd00::1]/",
    "http://[fc00::1]/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
    "http://[ff02::1]/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:{port}/_GET%20/",
    "ftp://127.0.0.1/",
    "dict://127.0.0.1:{port}/",
]


@pytest.mark.parametrize("url", SSRF_CORPUS)
async def test_ssrf_corpus_is_blocked(
    url: str, servers: Servers, settings: Settings, no_dns: list[str]
) -> None:
    ctx = make_ctx(settings)  # nothing allowed
    with pytest.raises(BlockedError) as e:
        await call(ctx, url=url.format(port=servers.port))
    assert e.value.retryable is False
    message = str(e.value)
    assert "VM_HTTP_ALLOW" in message or "http:// and https://" in message
    assert servers.requests == []
    assert no_dns == []


async def test_blocked_message_says_what_and_how(settings: Settings, no_dns: list[str]) -> None:
    ctx = make_ctx(settings)
    with pytest.raises(BlockedError) as e:
        await call(ctx, url="http://10.1.2.3/api")
    assert str(e.value) == ("the http step refuses 10.1.2.3: it is a private address "
                            "(add 10.1.2.3 to VM_HTTP_ALLOW to allow it)")
    with pytest.raises(BlockedError, match=r"2130706433 \(127\.0\.0\.1\): it is a loopback address"):
        await call(ctx, url="http://2130706433/")
    with pytest.raises(BlockedError, match="the cloud metadata address"):
        await call(ctx, url="http://169.254.169.254/")


async def test_names_resolving_to_blocked_addresses(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    fake_dns(monkeypatch, {"intranet.test": [["10.0.0.5"]], "mixed.test": [["93.184.216.34", "127.0.0.1"]]})
    ctx = make_ctx(settings)
    with pytest.raises(BlockedError) as e:
        await call(ctx, url="http://intranet.test/")
    assert "intranet.test (it resolves to 10.0.0.5): it is a private address" in str(e.value)
    assert "add intranet.test or 10.0.0.5 to VM_HTTP_ALLOW" in str(e.value)
    with pytest.raises(BlockedError, match=r"resolves to 127\.0\.0\.1"):  # any blocked address refuses
        await call(ctx, url="http://mixed.test/")


async def test_allow_by_name_cidr_and_any_spelling(
    servers: Servers, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"api.internal": [["127.0.0.1"]]})
    out = await call(make_ctx(settings, ["api.internal"]), url=f"http://api.internal:{servers.port}/echo")
    assert out["json"]["headers"]["host"] == f"api.internal:{servers.port}"
    out = await call(make_ctx(settings, ["127.0.0.0/8"]), url=f"http://2130706433:{servers.port}/json")
    assert out["status"] == 200
    out = await call(make_ctx(settings, ["::1"]), url=f"http://[::1]:{servers.port}/json")
    assert out["status"] == 200
    assert [r["local"] for r in servers.requests] == ["127.0.0.1", "127.0.0.1", "::1"]


REDIRECT_TARGETS = [
    "http://127.0.0.1:{port}/json",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:{port}/json",
    "http://[::ffff:127.0.0.1]:{port}/json",
    "http://2130706433:{port}/json",
    "http://0177.0.0.1:{port}/json",
    "http://localhost:{port}/json",
    "http://metadata.google.internal/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:{port}/",
]


@pytest.mark.parametrize("target", REDIRECT_TARGETS)
async def test_redirect_to_blocked_target(target: str, servers: Servers, settings: Settings,
                                          no_dns: list[str]) -> None:
    """127.0.0.2 is allowed, 127.0.0.1 is not: the redirect hop is checked again."""
    ctx = make_ctx(settings, ["127.0.0.2"])
    location = target.format(port=servers.port)
    with pytest.raises(BlockedError):
        await call(ctx, url=servers.url(f"/redirect?to={location}", host="127.0.0.2"))
    assert [r["local"] for r in servers.requests] == ["127.0.0.2"]


async def test_redirect_from_allowed_name_to_its_blocked_address(
    servers: Servers, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"alias.test": [["127.0.0.1"]]})
    ctx = make_ctx(settings, ["alias.test"])
    target = f"http://127.0.0.1:{servers.port}/json"
    with pytest.raises(BlockedError, match=r"refuses 127\.0\.0\.1: it is a loopback address"):
        await call(ctx, url=f"http://alias.test:{servers.port}/redirect?to={target}")
    assert len(servers.requests) == 1


async def test_dns_rebinding_uses_the_pinned_address(
    servers: Servers, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first answer passes the check; later answers point at a blocked address.

    The connection goes to the checked address (the transport never resolves the name
    again, even though the system resolver would now answer 127.0.0.1), and a redirect
    back to the same name is resolved and checked again — and refused."""
    calls = fake_dns(monkeypatch, {"rebind.test": [["127.0.0.2"], ["127.0.0.2"], ["127.0.0.1"]]})
    real_getaddrinfo = socket.getaddrinfo

    def rebound_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":
            return real_getaddrinfo("127.0.0.1", *args, **kwargs)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebound_getaddrinfo)
    ctx = make_ctx(settings, ["127.0.0.2"])
    out = await call(ctx, url=f"http://rebind.test:{servers.port}/echo")
    assert out["json"]["local"] == "127.0.0.2"
    assert out["json"]["headers"]["host"] == f"rebind.test:{servers.port}"
    assert servers.reached("127.0.0.1") == []
    assert calls == ["rebind.test"]

    with pytest.raises(BlockedError, match=r"rebind.test \(it resolves to 127.0.0.1\)"):
        await call(ctx, url=f"http://rebind.test:{servers.port}/redirect?to=/echo")
    assert calls == ["rebind.test"] * 3
    assert servers.reached("127.0.0.1") == []

"""The ``http`` step: one HTTP request with httpx, behind the SSRF guard.

Every hop — the first request and each redirect — goes through ``NetGuard.pin``: its
scheme, host and every resolved address are checked, and the connection is made to
the checked address only. Redirects are therefore followed here, not by httpx.
Credentials come only from workspace secrets and are sent only to the origin of the
first URL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.parse
from typing import Any, Literal

import httpx
from pydantic import Field, field_validator, model_validator

from velocitymesh.errors import StepError, StepTimeout
from velocitymesh.flows.steps.base import StepConfig, StepContext, StepResult
from velocitymesh.workspace.guarded_fetch import DEFAULT_HEADERS, REDIRECT_STATUSES, read_capped
from velocitymesh.workspace.netguard import NetGuard

KIND = "http"
DESCRIPTION = "Call an HTTP API (method, headers, query, JSON or text body, auth from secrets)."

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

# Headers that carry credentials: never sent to an origin other than the first URL's.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
EXCERPT_CHARS = 200


class BasicAuth(StepConfig):
    username: str
    password_secret: str = Field(description="Name of the workspace secret holding the password.")


class HeaderAuth(StepConfig):
    name: str = Field(description="Header to send, e.g. X-Api-Key.")
    secret: str = Field(description="Name of the workspace secret holding the header's value.")


class Auth(StepConfig):
    """Exactly one way to authenticate; every value is the *name* of a workspace secret."""

    bearer: str | None = Field(None, description="Secret name; sends Authorization: Bearer <value>.")
    basic: BasicAuth | None = None
    header: HeaderAuth | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Auth:
        chosen = [k for k in ("bearer", "basic", "header") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError("give exactly one of bearer, basic or header")
        return self


class Config(StepConfig):
    url: str
    method: Method = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, Any] = Field(default_factory=dict)
    json_body: Any | None = Field(None, alias="json", description="A JSON request body.")
    body: str | None = Field(None, description="A text request body (not together with json).")
    auth: Auth | None = None
    timeout: float = Field(30.0, gt=0, description="Seconds for the whole call, redirects included.")
    follow_redirects: bool = True
    max_redirects: int = Field(5, ge=0, le=30)
    expect_status: list[int] | None = Field(None, description="Statuses that succeed; default any 2xx.")
    response: Literal["auto", "json", "text"] = "auto"

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _one_body(self) -> Config:
        if self.json_body is not None and self.body is not None:
            raise ValueError("give either json or body, not both")
        return self


def check(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Static checks of a literal URL (a templated one is checked when the step runs)."""
    url = config.get("url")
    if not isinstance(url, str) or "{{" in url:
        return []
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as e:
        return [("url", f"invalid URL: {e}", "write it as https://host/path")]
    problems: list[tuple[str, str, str]] = []
    if parsed.scheme not in ("http", "https"):
        scheme = parsed.scheme or "no"
        problems.append(("url", f"the http step only fetches http(s) URLs, not {scheme} scheme",
                         "write it as https://host/path"))
    if parsed.userinfo:
        problems.append(("url", "the URL carries credentials",
                         "remove them from the URL and use auth: with a workspace secret"))
    return problems


async def run(config: Config, ctx: StepContext) -> StepResult:
    guard = NetGuard.from_settings(ctx.settings)
    call = _Call(config, ctx, guard)
    started = time.monotonic()
    try:
        async with asyncio.timeout(config.timeout):
            output = await call.perform()
    except TimeoutError as e:
        raise StepTimeout(
            f"{config.method} {call.shown_url} took longer than {config.timeout:g} s",
            hint="raise the step's with.timeout, or check that the server answers",
        ) from e
    ctx.logger.info(
        f"{config.method} {call.shown_url} → {output['status']} "
        f"({call.body_size} bytes, {time.monotonic() - started:.2f} s)"
    )
    return StepResult(output=output)


class _Call:
    """One step run's request, its redirects and its response."""

    def __init__(self, config: Config, ctx: StepContext, guard: NetGuard) -> None:
        self.config = config
        self.ctx = ctx
        self.guard = guard
        self.shown_url = _shown(config.url)
        self.body_size = 0
        self.auth_headers, self.secret_values = _auth_headers(config.auth, ctx)

    async def perform(self) -> dict[str, Any]:
        config = self.config
        url = self.guard.parse_url(config.url)
        self.shown_url = _shown(url)
        if url.userinfo:
            raise _fail(
                f"the URL {self.shown_url} carries credentials",
                "remove them from the URL and use auth: with a workspace secret",
                retryable=False,
            )
        origin = _origin(url)
        method: str = config.method
        content: bytes | None = None
        headers = dict(config.headers)
        if config.json_body is not None:
            content = json.dumps(config.json_body).encode()
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
        elif config.body is not None:
            content = config.body.encode()
        url = url.copy_merge_params(_query(config.query))  # URL's own query first, then with.query

        # The transport is used without httpx.AsyncClient: the client parses every Location
        # header itself (and fails on spellings like 0177.0.0.1 before the guard sees them),
        # and redirects, cookies and proxies are exactly what this step must control.
        timeout = httpx.Timeout(config.timeout).as_dict()
        async with self.guard.transport() as transport:
            for _hop in range(config.max_redirects + 1):
                url = await self.guard.pin(url)
                self.shown_url = _shown(url)
                same_origin = _origin(url) == origin
                hop_headers = httpx.Headers(DEFAULT_HEADERS)  # later updates replace, ignoring case
                hop_headers.update(headers if same_origin else _without_credentials(headers))
                if same_origin:
                    hop_headers.update(self.auth_headers)
                request = httpx.Request(method, url, headers=hop_headers, content=content,
                                        extensions={"timeout": timeout})
                response = await self._send(transport, request)
                try:
                    location = response.headers.get("location")
                    if config.follow_redirects and response.status_code in REDIRECT_STATUSES and location:
                        next_url = self._redirect_target(url, location)
                        self.ctx.logger.info(f"{method} {self.shown_url} → {response.status_code}, "
                                             f"redirected to {_shown(next_url)}")
                        status = response.status_code
                        to_get = status in (302, 303) or (status == 301 and method == "POST")
                        if to_get and method != "HEAD":
                            # What browsers and httpx do: the next request is a GET without a body.
                            method = "GET"
                            content = None
                            headers = {k: v for k, v in headers.items()
                                       if k.lower() not in ("content-type", "content-length")}
                        url = next_url
                        continue
                    body = await self._read(response)
                finally:
                    await response.aclose()
                return self._output(response, body)
        raise _fail(
            f"{config.method} {_shown(config.url)} redirected more than {config.max_redirects} times",
            "raise with.max_redirects, or call the final URL directly",
            retryable=False,
        )

    def _redirect_target(self, url: httpx.URL, location: str) -> httpx.URL:
        try:
            return url.join(location)
        except httpx.InvalidURL:
            # Let the guard say what the target is when it is a blocked spelling (0177.0.0.1).
            self.guard.parse_url(location)
            raise _fail(f"{self.shown_url} redirected to an invalid URL", "call the final URL directly",
                        retryable=False) from None

    async def _send(self, transport: httpx.AsyncBaseTransport, request: httpx.Request) -> httpx.Response:
        where = f"{request.method} {self.shown_url}"
        try:
            response = await transport.handle_async_request(request)
            response.request = request
            return response
        except httpx.TimeoutException as e:
            raise StepTimeout(f"{where} timed out ({type(e).__name__})",
                              hint="raise the step's with.timeout, or check that the server answers") from e
        except httpx.ConnectError as e:
            if "CERTIFICATE_VERIFY_FAILED" in str(e):
                raise _fail(f"{where}: the server's TLS certificate is not valid: {e}",
                            "fix the server's certificate; it cannot be skipped", retryable=False) from e
            raise _fail(f"{where}: could not connect: {e}", "check the URL and that the server is up",
                        retryable=True) from e
        except httpx.TransportError as e:
            raise _fail(f"{where}: the connection failed: {type(e).__name__}: {e}",
                        "the step can be retried", retryable=True) from e
        except httpx.HTTPError as e:
            raise _fail(f"{where}: {type(e).__name__}: {e}", "check the step's url and headers",
                        retryable=False) from e

    async def _read(self, response: httpx.Response) -> bytes:
        limit = self.ctx.settings.http_max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise self._too_large(limit)
        try:
            body, over = await read_capped(response, limit)  # decoded: a gzip bomb is capped too
        except httpx.TimeoutException as e:
            raise StepTimeout(f"{response.request.method} {self.shown_url} timed out reading the body",
                              hint="raise the step's with.timeout") from e
        except httpx.TransportError as e:
            raise _fail(f"{response.request.method} {self.shown_url}: reading the body failed: {e}",
                        "the step can be retried", retryable=True) from e
        if over:
            raise self._too_large(limit)
        self.body_size = len(body)
        return body

    def _too_large(self, limit: int) -> StepError:
        return _fail(
            f"the response of {self.config.method} {self.shown_url} is larger than {limit} bytes",
            "raise VM_HTTP_MAX_BYTES, or ask the API for less (pagination, fewer fields)",
            retryable=False,
        )

    def _output(self, response: httpx.Response, body: bytes) -> dict[str, Any]:
        config = self.config
        status = response.status_code
        text = body.decode(response.charset_encoding or "utf-8", errors="replace")
        ok = status in config.expect_status if config.expect_status else 200 <= status < 300
        if not ok:
            excerpt = " ".join(self._redact(text[: EXCERPT_CHARS * 2]).split())[:EXCERPT_CHARS]
            expected = ", ".join(map(str, config.expect_status)) if config.expect_status else "a 2xx status"
            raise _fail(
                f"{config.method} {self.shown_url} returned {status} {response.reason_phrase}"
                + (f": {excerpt}" if excerpt else ""),
                f"the step expects {expected}; set with.expect_status to accept others",
                retryable=status >= 500 or status == 429,
            )
        output: dict[str, Any] = {
            "status": status,
            "headers": {k.lower(): v for k, v in response.headers.items()},
            "json": None,
            "url": str(response.request.url.copy_with(username=None, password=None)),
        }
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        is_json = content_type == "application/json" or content_type.endswith("+json")
        wants_json = config.response == "json" or (config.response == "auto" and is_json)
        if wants_json and body.strip():
            try:
                output["json"] = json.loads(text)
                return output
            except ValueError as e:
                if config.response == "json":
                    raise _fail(f"{config.method} {self.shown_url} did not return JSON: {e}",
                                "set with.response: text to get the body as text", retryable=False) from e
                self.ctx.logger.warning(f"{self.shown_url} says it is JSON but is not; kept as text")
        elif wants_json and config.response == "json":
            return output
        output["text"] = text
        return output

    def _redact(self, text: str) -> str:
        for value in self.secret_values:
            text = text.replace(value, "***")
        return text


def _fail(message: str, hint: str, *, retryable: bool) -> StepError:
    error = StepError(message, hint=hint)
    error.retryable = retryable
    return error


def _auth_headers(auth: Auth | None, ctx: StepContext) -> tuple[dict[str, str], list[str]]:
    """The headers of ``auth``, and the secret strings to keep out of messages."""
    if auth is None:
        return {}, []
    if auth.bearer is not None:
        token = ctx.secret(auth.bearer)
        return {"Authorization": f"Bearer {token}"}, [token]
    if auth.basic is not None:
        password = ctx.secret(auth.basic.password_secret)
        encoded = base64.b64encode(f"{auth.basic.username}:{password}".encode()).decode()
        return {"Authorization": f"Basic {encoded}"}, [password, encoded]
    assert auth.header is not None
    value = ctx.secret(auth.header.secret)
    return {auth.header.name: value}, [value]


def _query(query: dict[str, Any]) -> dict[str, Any]:
    """Query values as httpx takes them: scalars and lists; objects as JSON; None left out."""
    params: dict[str, Any] = {}
    for key, value in query.items():
        if value is None:
            continue
        if isinstance(value, dict):
            value = json.dumps(value)
        elif isinstance(value, list | tuple):
            value = [json.dumps(v) if isinstance(v, dict | list) else v for v in value]
        params[key] = value
    return params


def _without_credentials(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS}


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host.rstrip("."), url.port


def _shown(url: str | httpx.URL) -> str:
    """The URL as logs and errors show it: no user info, no query (either may hold secrets)."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
        return str(parsed.copy_with(username=None, password=None, query=None, fragment=None))
    except (httpx.InvalidURL, TypeError):
        try:
            parts = urllib.parse.urlsplit(str(url))
            port = f":{parts.port}" if parts.port else ""
            return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"
        except ValueError:
            return "(an invalid URL)"

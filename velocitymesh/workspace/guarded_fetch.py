"""HTTP GET behind the SSRF guard, for callers other than the ``http`` step (the agent's
``http_get`` tool), and the body reader the ``http`` step shares with it.

The guard is :mod:`velocitymesh.workspace.netguard`, unchanged: every hop — the first
URL and each redirect target — goes through ``NetGuard.pin`` and the connection goes
only to the checked addresses, so ``VM_HTTP_ALLOW`` means the same thing here as in the
``http`` step. It lives in ``workspace`` so the ``agents`` layer can use it without
importing ``flows``.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from velocitymesh.errors import StepError
from velocitymesh.workspace.netguard import NetGuard

__all__ = ["DEFAULT_HEADERS", "REDIRECT_STATUSES", "Fetched", "guarded_get", "read_capped"]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
DEFAULT_HEADERS = {"User-Agent": "velocitymesh", "Accept": "*/*", "Accept-Encoding": "gzip, deflate"}


async def read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """The decoded body up to ``limit`` bytes, and whether there was more.

    Reading stops as soon as the limit is passed, so a gzip bomb or an endless stream
    costs at most one chunk more than ``limit``. httpx errors propagate to the caller.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():  # decoded: the cap applies after decompression
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False


@dataclass
class Fetched:
    """A response read by :func:`guarded_get`: at most ``max_bytes`` of its body."""

    status: int
    reason: str
    url: str
    headers: dict[str, str]
    body: bytes
    truncated: bool
    encoding: str = "utf-8"

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    @property
    def text(self) -> str:
        return self.body.decode(self.encoding, errors="replace")


async def guarded_get(
    url: str,
    *,
    guard: NetGuard,
    max_bytes: int,
    max_redirects: int = 5,
    timeout: float = 30.0,
) -> Fetched:
    """GET ``url`` through ``guard``, following redirects (each re-checked), reading at most ``max_bytes``.

    No credentials, cookies or proxies. Raises BlockedError for a refused address and
    StepError when the request cannot be made; a non-2xx status is returned, not raised.
    The caller bounds the total time (``asyncio.timeout``); ``timeout`` bounds each I/O.
    """
    target = guard.parse_url(url)
    if target.userinfo:
        raise StepError("the URL carries credentials", hint="remove user:password@ from the URL")
    io_timeout = httpx.Timeout(timeout).as_dict()
    async with guard.transport() as transport:
        for _hop in range(max_redirects + 1):
            target = await guard.pin(target)
            request = httpx.Request("GET", target, headers=DEFAULT_HEADERS, extensions={"timeout": io_timeout})
            try:
                response = await transport.handle_async_request(request)
            except httpx.HTTPError as e:
                raise StepError(f"GET {_shown(target)} failed: {type(e).__name__}: {e}",
                                hint="check the URL and that the server is up") from e
            response.request = request
            try:
                location = response.headers.get("location")
                if response.status_code in REDIRECT_STATUSES and location:
                    try:
                        target = target.join(location)
                    except httpx.InvalidURL:
                        guard.parse_url(location)  # says what a blocked spelling points at
                        raise StepError(f"{_shown(target)} redirected to an invalid URL",
                                        hint="fetch the final URL directly") from None
                    continue
                try:
                    body, truncated = await read_capped(response, max_bytes)
                except httpx.HTTPError as e:
                    raise StepError(f"GET {_shown(target)}: reading the body failed: {e}",
                                    hint="try again, or fetch something smaller") from e
            finally:
                await response.aclose()
            return Fetched(
                status=response.status_code,
                reason=response.reason_phrase,
                url=_shown(target),
                headers={k.lower(): v for k, v in response.headers.items()},
                body=body,
                truncated=truncated,
                encoding=response.charset_encoding or "utf-8",
            )
    raise StepError(f"GET {_shown(url)} redirected more than {max_redirects} times",
                    hint="fetch the final URL directly")


def _shown(url: str | httpx.URL) -> str:
    """A URL as messages show it: no user info, no query (either may carry secrets)."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
        return str(parsed.copy_with(username=None, password=None, query=None, fragment=None))
    except (httpx.InvalidURL, TypeError):
        return "(an invalid URL)"

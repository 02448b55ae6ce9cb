"""``/api/v1/docs``: the API reference as one self-contained HTML page, made from the OpenAPI document.

FastAPI's default docs page is Swagger UI loaded from a CDN: blank on a machine without
internet access, and a third-party script on a page that carries the session cookie. No
package in this installation ships Swagger UI's or ReDoc's assets, and adding one (several
MB of JavaScript) for a reference page is not worth it, so the page is rendered here, on
the server, with no script and no external resource: every operation with its parameters,
body and answers, and every schema with its fields. It is not interactive; for that, load
``/api/v1/openapi.json`` into any OpenAPI client (it needs the same token).
"""

from __future__ import annotations

import html
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

METHODS = ("get", "post", "put", "patch", "delete")
CSP = "default-src 'none'; style-src 'unsafe-inline'"  # the page needs nothing else

_CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1f2937;background:#f8fafc}
main{max-width:1000px;margin:0 auto;padding:24px}
h1{margin:0 0 4px}h2{margin:32px 0 8px;border-bottom:1px solid #e5e7eb;padding-bottom:4px}
.op{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:12px 16px;margin:10px 0}
.m{display:inline-block;min-width:64px;font-weight:700;font-family:ui-monospace,monospace;text-transform:uppercase}
.get{color:#2563eb}.post{color:#059669}.put,.patch{color:#d97706}.delete{color:#dc2626}
code,.path{font-family:ui-monospace,SFMono-Regular,Menlo,monospace}
table{border-collapse:collapse;margin:6px 0;width:100%}th,td{text-align:left;padding:3px 8px;
border-bottom:1px solid #f1f5f9;vertical-align:top}th{font-weight:600;color:#475569}
.muted{color:#64748b}pre{white-space:pre-wrap;margin:0}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _type(schema: dict[str, Any] | None) -> str:
    """A short, readable type of a JSON schema: ``list[RunOut]``, ``string | null``, …"""
    if not schema:
        return "any"
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return " | ".join(_type(s) for s in schema[key])
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    kind = schema.get("type", "object" if "properties" in schema else "any")
    if kind == "array":
        return f"list[{_type(schema.get('items'))}]"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"dict[str, {_type(schema['additionalProperties'])}]"
    extra = [f"{k} {schema[k]}" for k in ("format", "pattern", "minimum", "maximum", "maxLength") if k in schema]
    return str(kind) + (f" ({', '.join(extra)})" if extra else "")


def _rows(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    parts = [f'<div class="op" id="{_e(op.get("operationId", method + path))}">'
             f'<span class="m {method}">{method}</span> <span class="path">{_e(path)}</span>'
             f' <span class="muted">— {_e(op.get("summary", ""))}</span>']
    if op.get("description"):
        parts.append(f"<pre>{_e(op['description'])}</pre>")
    params = op.get("parameters") or []
    if params:
        parts.append(_rows(["parameter", "in", "type", "required", "description"], [
            [f"<code>{_e(p.get('name'))}</code>", _e(p.get("in")), _e(_type(p.get("schema"))),
             "yes" if p.get("required") else "", _e(p.get("description", ""))] for p in params
        ]))
    body = (op.get("requestBody") or {}).get("content") or {}
    for media, content in body.items():
        parts.append(f"<div>body <code>{_e(media)}</code>: <code>{_e(_type(content.get('schema')))}</code></div>")
    answers = op.get("responses") or {}
    if answers:
        rows = []
        for code, answer in answers.items():
            schemas = [_type(c.get("schema")) for c in (answer.get("content") or {}).values()]
            rows.append([f"<code>{_e(code)}</code>", _e(answer.get("description", "")),
                         f"<code>{_e(', '.join(schemas))}</code>" if schemas else ""])
        parts.append(_rows(["answer", "meaning", "body"], rows))
    parts.append("</div>")
    return "".join(parts)


def _schema(name: str, schema: dict[str, Any]) -> str:
    required = set(schema.get("required") or [])
    props = schema.get("properties") or {}
    parts = [f'<div class="op" id="schema-{_e(name)}"><b>{_e(name)}</b>']
    if schema.get("description"):
        parts.append(f" <span class='muted'>— {_e(schema['description'])}</span>")
    if props:
        parts.append(_rows(["field", "type", "required", "description"], [
            [f"<code>{_e(k)}</code>", f"<code>{_e(_type(v))}</code>", "yes" if k in required else "",
             _e(v.get("description", ""))] for k, v in props.items()
        ]))
    elif "enum" in schema or "type" in schema:
        parts.append(f" <code>{_e(_type(schema))}</code>")
    parts.append("</div>")
    return "".join(parts)


def render_docs(spec: dict[str, Any], openapi_url: str) -> str:
    """The reference page of an OpenAPI document (every value escaped; no script, no external resource)."""
    info = spec.get("info") or {}
    by_tag: dict[str, list[str]] = {}
    for path, item in (spec.get("paths") or {}).items():
        for method in METHODS:
            op = item.get(method)
            if op is not None:
                tag = (op.get("tags") or ["other"])[0]
                by_tag.setdefault(tag, []).append(_operation(path, method, op))
    sections = [f"<h2>{_e(tag)}</h2>{''.join(ops)}" for tag, ops in by_tag.items()]
    schemas = (spec.get("components") or {}).get("schemas") or {}
    if schemas:
        sections.append("<h2>schemas</h2>" + "".join(_schema(n, s) for n, s in sorted(schemas.items())))
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(info.get('title', 'API'))} API reference</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{_e(info.get('title', 'API'))} API <span class='muted'>{_e(info.get('version', ''))}</span></h1>"
        f"<pre>{_e(info.get('description', ''))}</pre>"
        f"<p>The machine-readable document: <a href='{_e(openapi_url)}'><code>{_e(openapi_url)}</code></a> "
        "(load it into any OpenAPI client to call the API interactively).</p>"
        + "".join(sections) + "</main></body></html>"
    )


def add_docs(app: FastAPI, path: str, openapi_url: str) -> None:
    """Serve the reference page of ``app``'s OpenAPI document at ``path`` (made once, on first request)."""
    page: list[str] = []

    @app.get(path, include_in_schema=False)
    async def api_docs(request: Request) -> HTMLResponse:
        if not page:
            page.append(render_docs(request.app.openapi(), openapi_url))
        return HTMLResponse(page[0], headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP})

"""A local Pinecone for the tests: the data-plane calls the memory store makes, and the
control-plane ``describe index`` that resolves an index name to its host.

Routes and wire shapes follow what the official ``pinecone`` SDK (10.x) sends and decodes
(read from ``pinecone/async_client/async_index.py`` and ``models/vectors/responses.py``):
camelCase JSON, ``Api-Key`` header, namespaces in the body.

    POST /vectors/upsert             {vectors: [{id, values, metadata}], namespace} → {upsertedCount}
    POST /query                      {topK, vector, namespace, filter, includeMetadata} → {matches, namespace}
    POST /vectors/delete             {namespace, ids | deleteAll | filter} → {}
    POST /vectors/fetch_by_metadata  {filter, namespace, limit, paginationToken} → {vectors, pagination}
    POST /describe_index_stats       {} → {namespaces: {ns: {vectorCount}}, dimension, totalVectorCount, …}
    GET  /indexes/{name}             control plane → {name, host, status, schema, deployment, …}

Filters support ``$eq $ne $in $nin $gt $gte $lt $lte $exists $and $or`` and bare values.
Errors have Pinecone's shapes: 401 for a wrong key, 400 for a dimension mismatch.
"""

from __future__ import annotations

import math
from typing import Any

from memory_servers import LocalServer, Request

API_KEY = "pc-test-key"


class FakePinecone:
    def __init__(self, dim: int = 16, name: str = "memory") -> None:
        self.dim, self.name = dim, name
        # namespace -> id -> {"id", "values", "metadata"}
        self.data: dict[str, dict[str, dict[str, Any]]] = {}
        self.server = LocalServer(self.handle)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def requests(self) -> list[Request]:
        return self.server.requests

    def close(self) -> None:
        self.server.close()

    # --- routing

    def handle(self, r: Request) -> tuple[int, Any]:
        if r.headers.get("api-key") != API_KEY:
            return 401, {"error": {"code": "UNAUTHENTICATED", "message": "Invalid API Key"}, "status": 401}
        body = r.body or {}
        routes = {
            ("POST", "/vectors/upsert"): self.upsert,
            ("POST", "/query"): self.query,
            ("POST", "/vectors/delete"): self.delete,
            ("POST", "/vectors/fetch_by_metadata"): self.fetch_by_metadata,
            ("POST", "/describe_index_stats"): self.stats,
        }
        if (r.method, r.path) in routes:
            return routes[(r.method, r.path)](body)
        if r.method == "GET" and r.path.startswith("/indexes/"):
            return self.describe_index(r.path.removeprefix("/indexes/"))
        return 404, {"error": {"code": "NOT_FOUND", "message": f"no route {r.method} {r.path}"}, "status": 404}

    # --- data plane

    def upsert(self, body: dict[str, Any]) -> tuple[int, Any]:
        ns = self.data.setdefault(body.get("namespace", ""), {})
        for v in body["vectors"]:
            if len(v["values"]) != self.dim:
                return 400, {"code": 3, "message": f"Vector dimension {len(v['values'])} does not match the "
                             f"dimension of the index {self.dim}", "details": []}
        for v in body["vectors"]:
            ns[v["id"]] = {"id": v["id"], "values": v["values"], "metadata": v.get("metadata") or {}}
        return 200, {"upsertedCount": len(body["vectors"])}

    def query(self, body: dict[str, Any]) -> tuple[int, Any]:
        namespace = body.get("namespace", "")
        query = body["vector"]
        if len(query) != self.dim:
            return 400, {"code": 3, "message": f"Vector dimension {len(query)} does not match the dimension of "
                         f"the index {self.dim}", "details": []}
        rows = [v for v in self.data.get(namespace, {}).values() if matches(v["metadata"], body.get("filter"))]
        scored = sorted(((cosine(query, v["values"]), v) for v in rows), key=lambda p: -p[0])[: body["topK"]]
        out = []
        for score, v in scored:
            m: dict[str, Any] = {"id": v["id"], "score": score, "values": v["values"] if body.get("includeValues")
                                 else []}
            if body.get("includeMetadata"):
                m["metadata"] = v["metadata"]
            out.append(m)
        return 200, {"matches": out, "namespace": namespace, "usage": {"readUnits": 5}}

    def delete(self, body: dict[str, Any]) -> tuple[int, Any]:
        ns = self.data.get(body.get("namespace", ""), {})
        if body.get("deleteAll"):
            ns.clear()
        for id_ in body.get("ids") or []:
            ns.pop(id_, None)
        if body.get("filter"):
            for id_ in [i for i, v in ns.items() if matches(v["metadata"], body["filter"])]:
                del ns[id_]
        if not ns:
            self.data.pop(body.get("namespace", ""), None)
        return 200, {}

    def fetch_by_metadata(self, body: dict[str, Any]) -> tuple[int, Any]:
        namespace = body.get("namespace", "")
        found = sorted((v for v in self.data.get(namespace, {}).values() if matches(v["metadata"], body["filter"])),
                       key=lambda v: v["id"])
        start = int(body.get("paginationToken") or 0)
        limit = body.get("limit", 100)
        page = found[start : start + limit]
        out: dict[str, Any] = {
            "vectors": {v["id"]: v for v in page}, "namespace": namespace, "usage": {"readUnits": 1},
        }
        if start + limit < len(found):
            out["pagination"] = {"next": str(start + limit)}
        return 200, out

    def stats(self, body: dict[str, Any]) -> tuple[int, Any]:
        namespaces = {ns: {"vectorCount": len(rows)} for ns, rows in self.data.items() if rows}
        return 200, {
            "namespaces": namespaces, "dimension": self.dim, "indexFullness": 0.0,
            "totalVectorCount": sum(n["vectorCount"] for n in namespaces.values()), "metric": "cosine",
            "vectorType": "dense",
        }

    # --- control plane

    def describe_index(self, name: str) -> tuple[int, Any]:
        if name != self.name:
            return 404, {"error": {"code": "NOT_FOUND", "message": f"Resource {name} not found"}, "status": 404}
        return 200, {
            "name": name, "host": self.url, "status": {"ready": True, "state": "Ready"},
            "deletion_protection": "disabled",
            "schema": {"fields": {"values": {"type": "dense_vector", "dimension": self.dim, "metric": "cosine"}}},
            "deployment": {"deployment_type": "managed", "cloud": "aws", "region": "us-east-1"},
        }


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def matches(meta: dict[str, Any], flt: dict[str, Any] | None) -> bool:
    """Pinecone's metadata filter language, the part the store and the tests use."""
    if not flt:
        return True
    for key, cond in flt.items():
        if key == "$and":
            if not all(matches(meta, c) for c in cond):
                return False
            continue
        if key == "$or":
            if not any(matches(meta, c) for c in cond):
                return False
            continue
        ops = cond if isinstance(cond, dict) else {"$eq": cond}
        for op, want in ops.items():
            if not _test(op, key in meta, meta.get(key), want):
                return False
    return True


def _test(op: str, present: bool, have: Any, want: Any) -> bool:
    if op == "$exists":
        return present == bool(want)
    if not present:
        return op in ("$ne", "$nin")
    values = have if isinstance(have, list) else [have]
    if op == "$eq":
        return want in values
    if op == "$ne":
        return want not in values
    if op == "$in":
        return any(v in want for v in values)
    if op == "$nin":
        return not any(v in want for v in values)
    compare = {"$gt": lambda a: a > want, "$gte": lambda a: a >= want, "$lt": lambda a: a < want,
               "$lte": lambda a: a <= want}
    return any(isinstance(v, int | float) and compare[op](v) for v in values)

from __future__ import annotations

import time

from store_helpers import Store

from velocitymesh.workspace.store import cache_get, cache_purge, cache_put


def test_cache_put_get_overwrite(store: Store) -> None:
    with store.session() as s:
        assert cache_get(s, "k") == (False, None)
        cache_put(s, "k", {"rows": [1, 2]}, None)
        cache_put(s, "none", None, None)
    with store.session() as s:
        assert cache_get(s, "k") == (True, {"rows": [1, 2]})
        assert cache_get(s, "none") == (True, None)  # a cached None is a hit
        cache_put(s, "k", "new", 3600)
    with store.session() as s:
        assert cache_get(s, "k") == (True, "new")


def test_cache_ttl_expires(store: Store) -> None:
    with store.session() as s:
        cache_put(s, "short", 1, 0.2)
        cache_put(s, "long", 2, 3600)
        cache_put(s, "gone", 3, -1)
    with store.session() as s:
        assert cache_get(s, "short") == (True, 1)
        assert cache_get(s, "gone") == (False, None)
    time.sleep(0.3)
    with store.session() as s:
        assert cache_get(s, "short") == (False, None)
        assert cache_get(s, "long") == (True, 2)
        assert cache_purge(s) == 2
        assert cache_get(s, "long") == (True, 2)

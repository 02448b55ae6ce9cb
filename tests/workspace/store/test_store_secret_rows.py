from __future__ import annotations

import pytest
from store_helpers import Store

from velocitymesh.errors import NotFoundError
from velocitymesh.workspace.store import (
    delete_secret,
    get_or_create_workspace,
    get_secret_ciphertexts,
    list_secret_names,
    put_secret,
)


def test_secret_rows(store: Store) -> None:
    ws = store.workspace_id
    with store.session() as s:
        other = get_or_create_workspace(s, "other")
        put_secret(s, ws, "B", b"\x00ct-b")
        put_secret(s, ws, "A", b"ct-a")
        put_secret(s, other.id, "A", b"other")
    with store.session() as s:
        first = list_secret_names(s, ws)
        put_secret(s, ws, "A", b"ct-a2")
    with store.session() as s:
        assert get_secret_ciphertexts(s, ws) == {"A": b"ct-a2", "B": b"\x00ct-b"}
        assert get_secret_ciphertexts(s, ws, ["B", "C"]) == {"B": b"\x00ct-b"}
        infos = list_secret_names(s, ws)
        assert [i.name for i in infos] == ["A", "B"]
        assert infos[0].created_at == first[0].created_at and infos[0].updated_at > first[0].updated_at
        delete_secret(s, ws, "A")
        with pytest.raises(NotFoundError):
            delete_secret(s, ws, "A")
        assert get_secret_ciphertexts(s, other.id) == {"A": b"other"}

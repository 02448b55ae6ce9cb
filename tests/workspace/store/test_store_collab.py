"""The update log and snapshots of live drafts, on SQLite and on Postgres."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from store_helpers import Store

from velocitymesh.workspace.store import (
    append_collab_updates,
    compact_collab_updates,
    count_collab_updates,
    delete_collab_document,
    get_or_create_workspace,
    load_collab_state,
    seed_collab_document,
)


def concat(snapshot: bytes | None, updates: Sequence[bytes]) -> bytes:
    """A stand-in merge: the store does not know the CRDT, only that merge folds bytes."""
    return (snapshot or b"") + b"".join(updates)


def test_a_draft_that_was_never_opened_is_empty(store: Store) -> None:
    with store.session() as s:
        state = load_collab_state(s, store.workspace_id, "nothing")
    assert state.snapshot is None and state.updates == [] and not state.exists and state.last_update_id == 0


def test_append_then_load_in_order(store: Store) -> None:
    with store.session() as s:
        seed_collab_document(s, store.workspace_id, "wf", b"seed")
        ids = append_collab_updates(s, store.workspace_id, "wf", [(b"u1", "p1"), (b"u2", "p2")])
        ids += append_collab_updates(s, store.workspace_id, "wf", [(b"u3", "p1")])
        append_collab_updates(s, store.workspace_id, "other", [(b"x", "p1")])
    assert ids == sorted(ids) and len(set(ids)) == 3
    with store.session() as s:
        state = load_collab_state(s, store.workspace_id, "wf")
    assert state.snapshot == b"seed"
    assert [(u.id, u.data, u.origin) for u in state.updates] == list(
        zip(ids, [b"u1", b"u2", b"u3"], ["p1", "p2", "p1"], strict=True)
    )
    assert state.last_update_id == ids[-1]


def test_the_first_seed_wins(store: Store) -> None:
    with store.session() as s:
        assert seed_collab_document(s, store.workspace_id, "wf", b"first") == b"first"
    with store.session() as s:
        assert seed_collab_document(s, store.workspace_id, "wf", b"second") == b"first"


def test_concurrent_seeds_agree_on_one(store: Store) -> None:
    won: list[bytes] = []
    barrier = threading.Barrier(4)

    def seed(i: int) -> None:
        barrier.wait()
        with store.session() as s:
            won.append(seed_collab_document(s, store.workspace_id, "wf", f"seed-{i}".encode()))

    threads = [threading.Thread(target=seed, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 4 and len(set(won)) == 1


def test_compaction_folds_the_log_into_the_snapshot(store: Store) -> None:
    with store.session() as s:
        seed_collab_document(s, store.workspace_id, "wf", b"S")
        ids = append_collab_updates(s, store.workspace_id, "wf", [(b"a", ""), (b"b", ""), (b"c", "")])
    with store.session() as s:
        assert compact_collab_updates(s, store.workspace_id, "wf", concat, min_updates=4) == 0
        assert compact_collab_updates(s, store.workspace_id, "wf", concat, min_updates=3) == 3
    with store.session() as s:
        state = load_collab_state(s, store.workspace_id, "wf")
        assert count_collab_updates(s, store.workspace_id, "wf") == 0
    assert state.snapshot == b"Sabc" and state.updates == [] and state.snapshot_update_id == ids[-1]
    # New rows keep counting up after the compacted ones (SQLite must not reuse deleted ids).
    with store.session() as s:
        (new_id,) = append_collab_updates(s, store.workspace_id, "wf", [(b"d", "")])
    assert new_id > ids[-1]


def test_compaction_needs_a_seeded_draft(store: Store) -> None:
    with store.session() as s:
        append_collab_updates(s, store.workspace_id, "wf", [(b"a", "")])
        assert compact_collab_updates(s, store.workspace_id, "wf", concat) == 0
        assert count_collab_updates(s, store.workspace_id, "wf") == 1


def test_concurrent_compactions_lose_nothing(store: Store) -> None:
    with store.session() as s:
        seed_collab_document(s, store.workspace_id, "wf", b"")
        append_collab_updates(s, store.workspace_id, "wf", [(bytes([i]), "") for i in range(50)])
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def compact() -> None:
        barrier.wait()
        try:
            with store.session() as s:
                compact_collab_updates(s, store.workspace_id, "wf", concat)
        except Exception as e:  # SQLite may refuse a second writer ("database is locked")
            errors.append(e)

    def append() -> None:
        barrier.wait()
        with store.session() as s:
            append_collab_updates(s, store.workspace_id, "wf", [(bytes([100 + i]), "") for i in range(10)])

    threads = [threading.Thread(target=compact), threading.Thread(target=compact), threading.Thread(target=append)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all("locked" in str(e) for e in errors)
    with store.session() as s:
        state = load_collab_state(s, store.workspace_id, "wf")
    everything = (state.snapshot or b"") + b"".join(u.data for u in state.updates)
    # Every byte is somewhere exactly once: folded into the snapshot or still in the log.
    assert sorted(everything) == [*range(50), *range(100, 110)]


def test_delete_forgets_the_draft(store: Store) -> None:
    with store.session() as s:
        seed_collab_document(s, store.workspace_id, "wf", b"S")
        append_collab_updates(s, store.workspace_id, "wf", [(b"a", "")])
        delete_collab_document(s, store.workspace_id, "wf")
        assert not load_collab_state(s, store.workspace_id, "wf").exists


def test_drafts_belong_to_their_workspace(store: Store) -> None:
    with store.session() as s:
        other = get_or_create_workspace(s, "other").id
        seed_collab_document(s, store.workspace_id, "wf", b"mine")
        seed_collab_document(s, other, "wf", b"theirs")
        append_collab_updates(s, other, "wf", [(b"x", "")])
        assert load_collab_state(s, store.workspace_id, "wf").snapshot == b"mine"
        assert load_collab_state(s, store.workspace_id, "wf").updates == []

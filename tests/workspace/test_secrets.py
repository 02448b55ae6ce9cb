from __future__ import annotations

import os
import pickle
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from velocitymesh.errors import ConfigurationError, NotFoundError, UsageError
from velocitymesh.settings import Settings
from velocitymesh.workspace.secrets import (
    Redactor,
    SecretBox,
    SecretStore,
    generate_key,
    load_key,
    validate_secret_name,
)
from velocitymesh.workspace.store import get_or_create_workspace, open_store, session_scope
from velocitymesh.workspace.store.models import SecretRow

VALUE = "sk-live-0123456789abcdef"


@pytest.fixture
def factory(settings: Settings) -> sessionmaker[Session]:
    return open_store(settings)


def _secrets(factory: sessionmaker[Session], settings: Settings, workspace: str = "default") -> SecretStore:
    with session_scope(factory) as s:
        ws = get_or_create_workspace(s, workspace)
    return SecretStore(factory, settings, ws.id)


def test_set_get_names_delete(factory: sessionmaker[Session], settings: Settings) -> None:
    store = _secrets(factory, settings)
    store.set("OPENAI_API_KEY", VALUE)
    store.set("webhook:hn-digest", "h" * 40)
    store.set("OPENAI_API_KEY", VALUE + "2")
    assert store.get("OPENAI_API_KEY") == VALUE + "2"
    assert store.get_many(["webhook:hn-digest"]) == {"webhook:hn-digest": "h" * 40}
    assert store.names() == ["OPENAI_API_KEY", "webhook:hn-digest"]
    assert store.all() == {"OPENAI_API_KEY": VALUE + "2", "webhook:hn-digest": "h" * 40}
    assert store.get_many(None) == store.all() and store.get_many([]) == {}
    store.delete("webhook:hn-digest")
    assert store.names() == ["OPENAI_API_KEY"]
    other = _secrets(factory, settings, "other")
    assert other.names() == []


def test_values_are_encrypted_at_rest(factory: sessionmaker[Session], settings: Settings) -> None:
    store = _secrets(factory, settings)
    store.set("TOKEN", VALUE)
    with session_scope(factory) as s:
        ciphertext = s.scalar(sa.select(SecretRow.ciphertext))
    assert ciphertext is not None and VALUE.encode() not in ciphertext and b"TOKEN" not in ciphertext
    files = [p for p in settings.home.iterdir() if p.name.startswith("velocitymesh.db")]
    assert files and all(VALUE.encode() not in p.read_bytes() for p in files)


def test_missing_secret_says_how_to_set_it(factory: sessionmaker[Session], settings: Settings) -> None:
    store = _secrets(factory, settings)
    store.set("OPENAI_API_KEY", VALUE)
    with pytest.raises(NotFoundError) as e:
        store.get("OPENAI_KEY")
    assert "velocitymesh secrets set OPENAI_KEY" in str(e.value) and "OPENAI_API_KEY" in str(e.value)
    with pytest.raises(NotFoundError, match="A, B"):
        store.get_many(["A", "OPENAI_API_KEY", "B"])
    with pytest.raises(NotFoundError):
        store.delete("NOPE")
    assert VALUE not in str(e.value)


@pytest.mark.parametrize("name", ["", "1ABC", "has space", "a/b", "x" * 129, "é"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="secret name"):
        validate_secret_name(name)


def test_good_names() -> None:
    for name in ("A", "_x", "webhook:hn-digest", "db.password", "a-b_c:d.e", "x" * 128):
        validate_secret_name(name)


def test_key_file_is_generated_0600_and_reused(settings: Settings) -> None:
    assert not settings.key_file.exists()
    key = load_key(settings)
    assert stat.S_IMODE(settings.key_file.stat().st_mode) == 0o600
    assert load_key(settings) == key
    SecretBox(key)  # a valid key
    assert [p.name for p in settings.home.iterdir()] == ["secret.key"]  # no temp files left


def test_concurrent_first_use_agrees_on_one_key(settings: Settings) -> None:
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(load_key(settings))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 8 and len(set(keys)) == 1


def test_loose_key_file_permissions_are_tightened(settings: Settings) -> None:
    load_key(settings)
    os.chmod(settings.key_file, 0o644)
    load_key(settings)
    assert stat.S_IMODE(settings.key_file.stat().st_mode) == 0o600


def test_production_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    prod = Settings(home=tmp_path, env="production")
    with pytest.raises(ConfigurationError) as e:
        load_key(prod)
    assert "VM_SECRET_KEY" in str(e.value) and "fly secrets set" in str(e.value)
    assert not prod.key_file.exists()
    with pytest.raises(ConfigurationError):
        SecretStore(open_store(prod), prod, "ws")
    key = generate_key()
    assert load_key(Settings(home=tmp_path, env="production", secret_key=key)) == key.encode()


def test_invalid_key_is_a_clear_error_without_the_key(tmp_path: Path) -> None:
    bad = "not-a-fernet-key-but-secret-material"
    with pytest.raises(ConfigurationError) as e:
        load_key(Settings(home=tmp_path, env="test", secret_key=bad))
    message = str(e.value)
    assert "VM_SECRET_KEY" in message and "velocitymesh secrets keygen" in message
    assert "Fernet.generate_key()" in message and bad not in message
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_wrong_key_is_a_clear_error(
    factory: sessionmaker[Session], settings: Settings, tmp_path: Path
) -> None:
    _secrets(factory, settings).set("TOKEN", VALUE)
    other = Settings(home=settings.home, env="test", secret_key=generate_key())
    with pytest.raises(ConfigurationError) as e:
        _secrets(factory, other).get("TOKEN")
    assert "different key" in str(e.value) and "VM_SECRET_KEY" in str(e.value) and VALUE not in str(e.value)


def test_rotation_with_several_keys(factory: sessionmaker[Session], settings: Settings) -> None:
    old = generate_key()
    new = generate_key()
    first = Settings(home=settings.home, env="test", secret_key=old)
    _secrets(factory, first).set("TOKEN", VALUE)
    both = Settings(home=settings.home, env="test", secret_key=f"{new}, {old}")
    assert _secrets(factory, both).get("TOKEN") == VALUE


def test_a_ciphertext_moved_to_another_name_does_not_open(
    factory: sessionmaker[Session], settings: Settings
) -> None:
    store = _secrets(factory, settings)
    store.set("ADMIN_PASSWORD", VALUE)
    store.set("PUBLIC_NOTE", "hello")
    with session_scope(factory) as s:
        ct = s.scalar(sa.select(SecretRow.ciphertext).where(SecretRow.name == "ADMIN_PASSWORD"))
        s.execute(sa.update(SecretRow).where(SecretRow.name == "PUBLIC_NOTE").values(ciphertext=ct))
    with pytest.raises(ConfigurationError, match="another secret") as e:
        store.get("PUBLIC_NOTE")
    assert VALUE not in str(e.value)


def test_secret_box_hides_its_key() -> None:
    key = generate_key()
    box = SecretBox(key)
    assert key not in repr(box) and key not in str(box)
    with pytest.raises(TypeError):
        pickle.dumps(box)
    assert box.decrypt(box.encrypt(b"x")) == b"x"


def test_redactor_masks_every_occurrence_longest_first() -> None:
    r = Redactor(["abcd", "abcdefgh", "", "zz"])
    assert r.redact_text("x abcdefgh y abcd zzz") == "x *** y *** ***"
    assert r.redact_text("nothing here") == "nothing here"
    assert r.redact_text("") == ""


def test_redactor_masks_overlapping_values_as_one() -> None:
    r = Redactor(["abc1", "c1de"])
    assert r.redact_text("--abc1de--") == "--***--"


def test_redactor_short_values_redact_aggressively() -> None:
    assert Redactor(["1"]).redact_text("2010-11-01") == "20***0-***-0***"  # adjacent matches merge


def test_redactor_catches_json_and_url_encoded_forms() -> None:
    secret = 'p@ss "word"/x'
    r = Redactor([secret])
    assert r.redact_text('{"password": "p@ss \\"word\\"/x"}') == '{"password": "***"}'
    assert r.redact_text("https://h/?pw=p%40ss%20%22word%22%2Fx") == "https://h/?pw=***"


def test_redactor_walks_structures_and_returns_copies() -> None:
    r = Redactor([VALUE])
    data: dict[str, Any] = {
        "headers": {"Authorization": f"Bearer {VALUE}"},
        VALUE: [VALUE, 3, None, (VALUE,)],
        "n": 1.5,
    }
    out = r.redact(data)
    assert out == {"headers": {"Authorization": "Bearer ***"}, "***": ["***", 3, None, ("***",)], "n": 1.5}
    assert data["headers"]["Authorization"] == f"Bearer {VALUE}"  # the input is untouched
    assert VALUE not in repr(r)
    assert not Redactor([]) and Redactor([]).redact(data) == data and Redactor([]).redact(data) is not data
    with pytest.raises(TypeError):
        pickle.dumps(r)


def test_store_redactor_covers_all_values(factory: sessionmaker[Session], settings: Settings) -> None:
    store = _secrets(factory, settings)
    store.set("A", VALUE)
    store.set("B", "another-secret")
    r = store.redactor().extended(["late-value"])
    assert r.redact_text(f"{VALUE} another-secret late-value") == "*** *** ***"

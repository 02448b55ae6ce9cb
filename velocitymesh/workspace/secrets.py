"""Workspace secrets: encrypted at rest, redacted everywhere else.

Encryption is Fernet (``cryptography``): AES-128-CBC with HMAC-SHA256, a versioned
token format, and a key that is one printable string — easy to hand to
``fly secrets set``. AES-GCM would also do, but Fernet leaves no nonce handling to get
wrong, and ``MultiFernet`` gives key rotation for free: ``VM_SECRET_KEY`` may hold
several comma-separated keys, the first encrypts and any of them decrypts.

Each ciphertext also seals the workspace id and the secret's name with the value, so a
row copied onto another name or workspace in the database fails to open instead of
handing one secret out as another.

The key comes from ``VM_SECRET_KEY``; outside production, when that is unset, one is
generated once into ``$VM_HOME/secret.key`` (mode 0600). Values never appear in
exception messages or reprs; :class:`Redactor` masks them in anything else.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import secrets
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from velocitymesh.errors import ConfigurationError, NotFoundError, UsageError
from velocitymesh.workspace import store
from velocitymesh.workspace.store import session_scope

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from velocitymesh.settings import Settings

log = logging.getLogger(__name__)

SECRET_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_:.-]{0,127}$"
_NAME_RE = re.compile(SECRET_NAME_PATTERN)
KEYGEN_HINT = (
    "generate one with `velocitymesh secrets keygen` or "
    "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`"
)


def generate_key() -> str:
    """A new random key for ``VM_SECRET_KEY``."""
    return Fernet.generate_key().decode()


def _parse_keys(raw: bytes | str, source: str) -> list[bytes]:
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    keys = [k.strip().encode() for k in text.split(",") if k.strip()]
    if not keys:
        raise ConfigurationError(f"{source} is empty", hint=KEYGEN_HINT)
    for i, key in enumerate(keys, 1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            # `from None`: the underlying error must not carry the key into a traceback.
            which = f" (key {i} of {len(keys)})" if len(keys) > 1 else ""
            raise ConfigurationError(
                f"{source} is not a valid key{which}: expected 32 url-safe base64-encoded bytes",
                hint=KEYGEN_HINT,
            ) from None
    return keys


def load_key(settings: Settings) -> bytes:
    """The key (or comma-separated keys) that encrypts this installation's secrets.

    ``VM_SECRET_KEY`` when set; otherwise, outside production, the key file in VM_HOME,
    created on first use.
    """
    if settings.secret_key:
        return b",".join(_parse_keys(settings.secret_key, "VM_SECRET_KEY"))
    if settings.env == "production":
        raise ConfigurationError(
            "refusing to start in production without VM_SECRET_KEY",
            hint="set it with `fly secrets set VM_SECRET_KEY=$(velocitymesh secrets keygen)`; " + KEYGEN_HINT,
        )
    return _key_from_file(settings.key_file)


def _key_from_file(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raw = _create_key_file(path)
    keys = _parse_keys(raw, f"the key file {path}")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        log.warning("tightening the permissions of %s to 0600 (others could read it)", path)
        os.chmod(path, 0o600)
    return b",".join(keys)


def _create_key_file(path: Path) -> bytes:
    """Write a new key to ``path`` unless another process gets there first; either way
    return the key the file ends up holding (never a half-written one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(Fernet.generate_key() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            # link() publishes the complete file and fails if the name exists: first writer wins.
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: exclusive create, then write
            try:
                out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(out, "wb") as f:
                    f.write(tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes()


class SecretBox:
    """Encrypts and decrypts with the installation's key(s). Holds the key: it has no
    repr showing it and refuses to be pickled (so it cannot ride into a child process,
    a Prefect parameter or a cache)."""

    __slots__ = ("_count", "_fernet")

    def __init__(self, key: bytes | str) -> None:
        keys = _parse_keys(key, "the secret key")
        self._fernet = MultiFernet([Fernet(k) for k in keys])
        self._count = len(keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        return cls(load_key(settings))

    def encrypt(self, plaintext: bytes) -> bytes:
        return self._fernet.encrypt(plaintext)

    def decrypt(self, token: bytes, *, what: str = "a secret") -> bytes:
        try:
            return self._fernet.decrypt(token)
        except InvalidToken:
            raise ConfigurationError(
                f"cannot decrypt {what}: it was encrypted with a different key (or altered)",
                hint="set VM_SECRET_KEY to the key in use when it was stored (several keys may be given, "
                "comma-separated), or store the secret again",
            ) from None

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt ``token`` with the first key."""
        return self._fernet.rotate(token)

    def __repr__(self) -> str:
        return f"<SecretBox keys={self._count}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a SecretBox holds the encryption key and cannot be pickled")


def validate_secret_name(name: str) -> None:
    """Raise UsageError unless ``name`` is a valid secret name."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UsageError(
            f"invalid secret name {name!r}",
            hint="use a letter or _ first, then up to 127 letters, digits or _ : . - (e.g. OPENAI_API_KEY)",
        )


class SecretStore:
    """The secrets of one workspace: values go in and out here, and only here, in clear."""

    def __init__(self, session_factory: sessionmaker[Session], settings: Settings, workspace_id: str) -> None:
        self._factory = session_factory
        self._workspace_id = workspace_id
        self._box = SecretBox.from_settings(settings)  # fails now, not at first use, without a key

    def __repr__(self) -> str:
        return f"<SecretStore workspace={self._workspace_id}>"

    def _seal(self, name: str, value: str) -> bytes:
        payload = {"w": self._workspace_id, "n": name, "v": value}
        return self._box.encrypt(json.dumps(payload, ensure_ascii=False).encode())

    def _open(self, name: str, ciphertext: bytes) -> str:
        data = json.loads(self._box.decrypt(ciphertext, what=f"secret {name!r}"))
        if data.get("w") != self._workspace_id or data.get("n") != name:
            raise ConfigurationError(
                f"secret {name!r} holds another secret's value (its row was copied or moved in the database)",
                hint=f"store it again with `velocitymesh secrets set {name}`",
            )
        return str(data["v"])

    def set(self, name: str, value: str) -> None:
        validate_secret_name(name)
        if not isinstance(value, str):
            raise UsageError(f"the value of secret {name!r} must be a string, not {type(value).__name__}")
        with session_scope(self._factory) as s:
            store.put_secret(s, self._workspace_id, name, self._seal(name, value))

    def get(self, name: str) -> str:
        return self.get_many([name])[name]

    def get_many(self, names: Iterable[str] | None = None) -> dict[str, str]:
        """Values by name, all of the workspace's when ``names`` is None; NotFoundError naming
        every missing one."""
        if names is None:
            with session_scope(self._factory) as s:
                found = store.get_secret_ciphertexts(s, self._workspace_id)
            return {n: self._open(n, ct) for n, ct in found.items()}
        wanted = list(dict.fromkeys(names))
        with session_scope(self._factory) as s:
            found = store.get_secret_ciphertexts(s, self._workspace_id, wanted)
            missing = [n for n in wanted if n not in found]
            if missing:
                known = [i.name for i in store.list_secret_names(s, self._workspace_id)]
                raise self._not_found(missing, known)
        return {n: self._open(n, found[n]) for n in wanted}

    def _not_found(self, missing: list[str], known: list[str]) -> NotFoundError:
        hint = "set it with " + ", ".join(f"`velocitymesh secrets set {n}`" for n in missing)
        close = {c for n in missing for c in difflib.get_close_matches(n, known, n=2)}
        if close:
            hint = f"did you mean {' or '.join(sorted(close))}? Otherwise {hint}"
        noun = "secret" if len(missing) == 1 else "secrets"
        return NotFoundError(f"no {noun} named {', '.join(missing)} in this workspace", hint=hint)

    def names(self) -> list[str]:
        with session_scope(self._factory) as s:
            return [i.name for i in store.list_secret_names(s, self._workspace_id)]

    def delete(self, name: str) -> None:
        with session_scope(self._factory) as s:
            store.delete_secret(s, self._workspace_id, name)

    def all(self) -> dict[str, str]:
        """Every value of the workspace, by name (for the run context and the redactor)."""
        return self.get_many(None)

    def redactor(self) -> Redactor:
        """A redactor for every value of the workspace."""
        return Redactor(self.all().values())


class Redactor:
    """Replaces secret values with ``***`` in text and in JSON-like structures.

    Any non-empty value is redacted, however short. A very short secret ("1", "ab")
    therefore masks every occurrence of those characters in everything redacted: that
    is the price of never letting one through; prefer long secrets. Each value is also
    matched in its JSON-escaped and URL-encoded forms, the shapes it takes in logged
    request bodies and URLs. Overlapping matches are masked as one.
    """

    MASK = "***"
    __slots__ = ("_pattern", "_values")

    def __init__(self, values: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for value in values:
            if not isinstance(value, str) or not value:
                continue
            forms.add(value)
            forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
            forms.add(json.dumps(value)[1:-1])
            forms.add(urllib.parse.quote(value, safe=""))
            forms.add(urllib.parse.quote_plus(value, safe=""))
        self._values = frozenset(forms)
        ordered = sorted(forms, key=len, reverse=True)  # longest first: the longest match at each spot
        # A lookahead finds a match starting at every position, so overlapping values are all seen.
        self._pattern = re.compile("(?=(" + "|".join(map(re.escape, ordered)) + "))") if ordered else None

    def extended(self, values: Iterable[str]) -> Redactor:
        """A redactor for these values and this one's."""
        return Redactor([*self._values, *values])

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __repr__(self) -> str:
        return f"<Redactor {len(self._values)} forms>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Redactor holds secret values and cannot be pickled")

    def redact_text(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        spans: list[list[int]] = []
        for m in self._pattern.finditer(text):
            start, end = m.start(), m.start() + len(m.group(1))
            if spans and start <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([start, end])
        if not spans:
            return text
        parts, pos = [], 0
        for start, end in spans:
            parts.append(text[pos:start])
            parts.append(self.MASK)
            pos = end
        parts.append(text[pos:])
        return "".join(parts)

    def redact(self, obj: Any) -> Any:
        """A copy of ``obj`` with every string (keys included) redacted, walking dicts,
        lists and tuples; other values are returned as they are."""
        if isinstance(obj, str):
            return self.redact_text(obj)
        if isinstance(obj, Mapping):
            return {
                (self.redact_text(k) if isinstance(k, str) else k): self.redact(v) for k, v in obj.items()
            }
        if isinstance(obj, list):
            return [self.redact(v) for v in obj]
        if isinstance(obj, tuple):
            return tuple(self.redact(v) for v in obj)
        return obj

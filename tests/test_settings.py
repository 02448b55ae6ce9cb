"""Settings: the VM_ prefix, and the plain names Fly.io sets."""

import pytest

from velocitymesh.settings import Settings


def test_fly_style_urls_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://app:pw@db.internal:5432/app")
    monkeypatch.setenv("REDIS_URL", "redis://default:pw@fly-redis.upstash.io:6379")
    s = Settings()
    assert s.resolved_database_url == "postgresql+psycopg://app:pw@db.internal:5432/app"
    assert s.redis_url == "redis://default:pw@fly-redis.upstash.io:6379"


def test_vm_prefix_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://a/a")
    monkeypatch.setenv("VM_DATABASE_URL", "sqlite:///b.db")
    assert Settings().resolved_database_url == "sqlite:///b.db"


def test_comma_separated_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VM_HTTP_ALLOW", "127.0.0.1, 10.0.0.0/8")
    assert Settings().http_allow == ["127.0.0.1", "10.0.0.0/8"]

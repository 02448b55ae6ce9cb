"""One settings object for the whole package, read from ``VM_*`` environment variables.

Every setting has a default that works on a laptop with nothing configured: SQLite and
artefacts under ``VM_HOME`` (``./.velocitymesh``), the in-process event bus, DuckDB.
Each outside service is switched on by one setting.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VM_", extra="ignore")

    env: Literal["development", "production", "test"] = Field(
        "development", description="`production` refuses to start without VM_SECRET_KEY and a sandbox."
    )
    home: Path = Field(Path(".velocitymesh"), description="Folder for the SQLite database, key file, artefacts.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///$VM_HOME/velocitymesh.db. "
        "Postgres: postgresql+psycopg://user:pass@host/db"
    )
    redis_url: str | None = Field(None, description="Redis URL for the event bus; unset = in-process bus.")
    secret_key: str | None = Field(
        None, description="Fernet key encrypting secrets at rest; generated into $VM_HOME/secret.key when unset "
        "(outside production)."
    )
    workspace: str = Field("default", description="Workspace the CLI acts on.")
    http_allow: list[str] = Field(
        default_factory=list,
        description="Hosts, IPs or CIDRs the http step may reach even though they are private/loopback "
        "(comma-separated).",
    )
    python_isolation: Literal["auto", "bwrap", "process", "inprocess"] = Field(
        "auto", description="How python steps are isolated: bwrap (Linux namespaces), process (child process "
        "only), inprocess (trusted notebooks). auto = bwrap when available."
    )
    python_network: bool = Field(True, description="Whether python steps may use the network.")
    python_memory_mb: int = Field(1024, description="Address-space limit of a python step, in MiB.")
    python_cpu_seconds: int = Field(60, description="CPU-time limit of a python step, in seconds.")
    python_max_procs: int = Field(64, description="Process limit inside a python step's sandbox.")
    step_timeout: float = Field(3600.0, description="Default step timeout in seconds when a step sets none.")
    max_concurrency: int = Field(16, description="Steps a run executes at once unless the workflow says less.")
    template_max_bytes: int = Field(1_000_000, description="Largest string a template may render to.")
    http_max_bytes: int = Field(10_000_000, description="Largest HTTP response body a step reads.")
    log_level: str = Field("INFO", description="Log level of the velocitymesh loggers.")
    default_model: str = Field(
        "openai:gpt-4o-mini", description="Model (provider:model) of llm and agent steps that name none."
    )
    compatible_base_url: str | None = Field(
        None, description="Base URL of an OpenAI-compatible server for `compatible:` models "
        "(Ollama http://localhost:11434/v1, vLLM, llama.cpp)."
    )
    compatible_api_key: str | None = Field(
        None, description="API key sent to VM_COMPATIBLE_BASE_URL, if that server wants one."
    )
    prices: dict[str, Any] = Field(
        default_factory=dict,
        description='Price overrides as JSON, USD per million tokens: {"openai:gpt-4o": {"input": 2.5, '
        '"output": 10}}; a key ending in a model-name prefix covers its dated versions.',
    )
    llm_retries: int = Field(
        3, ge=0, description="Retries of a model call on 429 (after the server's Retry-After), 5xx or a lost "
        "connection."
    )
    llm_retry_backoff: float = Field(
        0.5, ge=0, description="First wait in seconds between model-call retries when the server names none; "
        "doubles each time."
    )
    llm_max_retry_wait: float = Field(
        60.0, ge=0, description="Longest Retry-After the model-call retries wait; a server asking for longer "
        "fails the call at once."
    )
    llm_timeout: float = Field(600.0, gt=0, description="Seconds one model request may take.")

    @field_validator("http_allow", mode="before")
    @classmethod
    def _split_commas(cls, v: object) -> object:
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("["):
                import json

                return json.loads(v)
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            url = self.database_url
            # Fly's `postgres attach` gives postgres://; SQLAlchemy needs the driver named.
            for prefix in ("postgres://", "postgresql://"):
                if url.startswith(prefix):
                    return "postgresql+psycopg://" + url[len(prefix):]
            return url
        return f"sqlite:///{(self.home / 'velocitymesh.db').resolve()}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def key_file(self) -> Path:
        return self.home / "secret.key"


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings (read once). Tests build their own ``Settings(...)``."""
    return Settings()

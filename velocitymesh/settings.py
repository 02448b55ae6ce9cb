"""One settings object for the whole package, read from ``VM_*`` environment variables.

Every setting has a default that works on a laptop with nothing configured: SQLite and
artefacts under ``VM_HOME`` (``./.velocitymesh``), the in-process event bus, DuckDB.
Each outside service is switched on by one setting.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VM_", extra="ignore")

    env: Literal["development", "production", "test"] = Field(
        "development", description="`production` refuses to start without VM_SECRET_KEY and a sandbox."
    )
    home: Path = Field(Path(".velocitymesh"), description="Folder for the SQLite database, key file, artefacts.")
    # DATABASE_URL / REDIS_URL too: what `fly postgres attach` and `fly redis create` set
    database_url: str | None = Field(
        None, validation_alias=AliasChoices("VM_DATABASE_URL", "DATABASE_URL", "database_url"),
        description="SQLAlchemy URL (DATABASE_URL is read too); default sqlite:///$VM_HOME/velocitymesh.db. "
        "Postgres: postgresql+psycopg://user:pass@host/db (postgres:// is accepted)"
    )
    redis_url: str | None = Field(
        None, validation_alias=AliasChoices("VM_REDIS_URL", "REDIS_URL", "redis_url"),
        description="Redis URL for the event bus (REDIS_URL is read too); unset = in-process bus.",
    )
    secret_key: str | None = Field(
        None, description="Fernet key encrypting secrets at rest; generated into $VM_HOME/secret.key when unset "
        "(outside production)."
    )
    workspace: str = Field("default", description="Workspace the CLI acts on.")
    http_allow: Annotated[list[str], NoDecode] = Field(
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
    prefect_work_pool: str = Field(
        "velocitymesh", description="Prefect work pool (type process) that `velocitymesh deploy` targets and "
        "`velocitymesh worker` serves."
    )
    prefect_server_port: int = Field(
        4200, description="Port of the local Prefect server velocitymesh starts when PREFECT_API_URL is unset."
    )
    prefect_crash_after: float = Field(
        90.0, gt=0, description="Seconds without a heartbeat after which `velocitymesh worker` marks a running run "
        "crashed. Keep it above 30: in-process runs beat every 10 s."
    )
    prefect_worker_limit: int | None = Field(
        None, ge=1, description="Flow runs one `velocitymesh worker` executes at once; unset = no limit."
    )
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
        '"output": 10}}; a key also covers the model\'s dated snapshots (gpt-4o-2024-08-06).',
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
    embedding_model: str = Field(
        "hash", description="Embedding model of embed/search steps and agent memory that name none: "
        "openai:text-embedding-3-small, compatible:<model>, local (all-MiniLM-L6-v2, extra local-embeddings) "
        "or hash (offline word hashing, not semantic)."
    )
    memory_backend: Literal["auto", "duckdb", "pinecone"] = Field(
        "auto", description="Vector memory store: duckdb ($VM_HOME/memory.duckdb) or pinecone. auto = pinecone "
        "when PINECONE_API_KEY and VM_PINECONE_INDEX (or VM_PINECONE_HOST) are set."
    )
    pinecone_index: str | None = Field(None, description="Pinecone index for vector memory (key: PINECONE_API_KEY).")
    pinecone_host: str | None = Field(
        None, description="Data-plane host of the Pinecone index; skips the lookup by VM_PINECONE_INDEX."
    )
    # --- server (velocitymesh up / serve) ---
    host: str = Field("127.0.0.1", description="Address `velocitymesh up` listens on (`serve` listens on 0.0.0.0).")
    port: int = Field(
        8080, ge=1, le=65535, description="Port of `velocitymesh up`; `serve` takes $PORT first (Fly.io sets it)."
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins (scheme://host:port, comma-separated) allowed to open the dashboard's websockets, "
        "besides the server's own address and http://127.0.0.1:$VM_PORT, http://localhost:$VM_PORT.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins (comma-separated) whose browser code may call the API (CORS); empty = none.",
    )
    admin_password: str | None = Field(
        None, description="Password of the `admin` user created on first start when there are no users; "
        "unset = `velocitymesh up` generates one and prints it once."
    )
    session_max_age: int = Field(
        7 * 24 * 3600, ge=60, description="Seconds a dashboard login (the signed `vm_session` cookie) stays valid."
    )
    metrics_public: bool = Field(
        True, description="Whether /metrics answers without a session or token (false = like any other route)."
    )
    login_rate_per_minute: int = Field(
        10, ge=0, description="Login attempts per minute per client address and username; 0 = unlimited."
    )
    token_rate_per_minute: int = Field(
        1200, ge=0, description="API requests per minute per API token (429 beyond it); 0 = unlimited."
    )
    webhook_timeout: float = Field(
        30.0, gt=0, description="Seconds a webhook with `respond:` waits for that step when the step sets no timeout."
    )

    @field_validator("http_allow", "allowed_origins", "cors_origins", mode="before")
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

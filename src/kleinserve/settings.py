"""Server settings: built once by the CLI (flags over KLEINSERVE_* environment variables) and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024
DEFAULT_SAFETY_MODEL = "Falconsai/nsfw_image_detection"


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "kleinserve"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KLEINSERVE_", frozen=True, extra="forbid")

    # What to serve. "ID" loads the weights from the Hugging Face cache, "ID=PATH" a local checkpoint
    # under that id. The first model is the default for requests that name none.
    models: Annotated[tuple[str, ...], NoDecode] = ()
    demo: bool = False  # serve the tiny random-weight checkpoint as flux.2-klein-4b (built on first use)
    device: str | None = None
    dtype: str | None = None
    allow_download: bool = True
    warmup: bool = True

    host: str = "127.0.0.1"
    port: int = 8000
    public_base_url: str | None = None  # e.g. https://images.example.com; default: the request's own host
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    # Host names the server answers to (Host header); empty: any, and returned URLs copy the Host header
    # unless public_base_url is set. Forwarding headers (X-Forwarded-For/-Proto) are believed only from
    # these proxy addresses; empty: from none.
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = ()
    # Slow clients: the whole header must arrive within header_timeout_s of connecting, and the body may
    # pause at most body_timeout_s between chunks. On SIGTERM, running batches get shutdown_grace_s.
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)
    shutdown_grace_s: float = Field(30.0, ge=0)

    data_dir: Path = Field(default_factory=default_data_dir)
    retention_hours: float = 24.0  # jobs and stored images older than this are deleted; 0 keeps them

    api_keys: Annotated[
        tuple[str, ...], NoDecode
    ] = ()  # none means the API is open to anyone who can reach it
    rate_limit_per_minute: int = 0  # per API key (or client address when open); 0 = unlimited
    max_request_bytes: int = 40 * MiB
    max_image_bytes: int = 20 * MiB

    max_batch_images: int = 8
    batch_wait_ms: float = 10.0  # how long a lone request waits for compatible company
    max_queue_depth: int = 64  # queued jobs per model before new work gets 503
    prompt_cache_size: int = Field(16, ge=0)  # prompt embeddings kept per model (0: off); 7.5 MiB each for 4B
    # Speed levers (engine/optimize.py). compile None: on for CUDA, off for CPU. attention_backend None:
    # PyTorch SDPA picks. warmup_sizes empty: 256x256, or the common sizes when compiling.
    compile: bool | None = None
    attention_backend: str | None = None
    warmup_sizes: Annotated[tuple[str, ...], NoDecode] = ()

    stats_window_seconds: float = 3600.0

    # The safety checker (fal's enable_safety_checker; OpenAI requests only with safety_check_openai).
    # If it cannot be loaded the server does not start, unless safety_checker is False.
    safety_checker: bool = True
    safety_model: str = DEFAULT_SAFETY_MODEL  # Hub repo id (HF cache) or local directory
    safety_threshold: float = Field(0.5, ge=0.0, le=1.0)  # flag at this unsafe probability; 0 flags all
    safety_check_openai: bool = False

    # Outbound requests made for users (fal image_urls, webhooks) never go to loopback, private,
    # link-local or other internal addresses, except networks listed here (CIDR, e.g. 10.1.0.0/16).
    allowed_private_networks: Annotated[tuple[str, ...], NoDecode] = ()
    image_fetch_timeout_s: float = Field(15.0, gt=0)
    webhook_attempts: int = Field(5, ge=1)
    webhook_retry_base_s: float = Field(1.0, ge=0)  # waits base, 2*base, 4*base, ... between attempts
    webhook_timeout_s: float = Field(10.0, gt=0)

    @field_validator(
        "models", "api_keys", "allowed_private_networks", "warmup_sizes", "allowed_hosts", "trusted_proxies",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _split_commas(cls, value):
        if isinstance(value, str):  # KLEINSERVE_API_KEYS=a,b
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("api_keys")
    @classmethod
    def _real_keys(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        if any(not key.strip() or key != key.strip() for key in keys):
            raise ValueError("an API key must not be empty or start or end with whitespace")
        return keys

    @field_validator("retention_hours", "batch_wait_ms", "stats_window_seconds")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must not be negative")
        return value

    @field_validator("max_batch_images", "max_queue_depth", "max_request_bytes", "max_image_bytes")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @property
    def database_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def demo_checkpoint_dir(self) -> Path:
        return self.data_dir / "demo-checkpoint"

    @property
    def demo_safety_dir(self) -> Path:
        return self.data_dir / "demo-safety-classifier"

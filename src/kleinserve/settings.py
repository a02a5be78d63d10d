"""Server settings: built once by the CLI (flags over KLEINSERVE_* environment variables) and passed down.

Each field's description is its help text; `kleinserve serve` derives one flag per field from the name, type
and default (cli.py), with a `Flag` in the annotation where the name or type does not say it all."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kleinserve.pricing import parse_prices

MiB = 1024 * 1024
DEFAULT_SAFETY_MODEL = "Falconsai/nsfw_image_detection"
DTYPES = ("bfloat16", "float16", "float32")
QUANTIZATIONS = ("fp8",)  # engine/fp8.py's FORMATS
OFFLOADABLE = ("text-encoder",)


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "kleinserve"


@dataclass(frozen=True)
class Flag:
    """How a setting appears on `kleinserve serve` where the default rule does not fit. The rule: --NAME with
    dashes; a tuple is a repeatable flag; a bool that is on by default is a --no-NAME switch, one that is off
    a --NAME switch, one that is None (auto) a --NAME/--no-NAME pair."""

    name: str | None = None  # the flag, e.g. "--model" for models (repeatable flags take the singular)
    metavar: str | None = None
    choices: tuple[str, ...] | None = None


Repeatable = Annotated[tuple[str, ...], NoDecode]  # KLEINSERVE_X=a,b in the environment; the flag repeats


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KLEINSERVE_", frozen=True, extra="forbid")

    # What to serve. The first model is the default for requests that name none.
    models: Annotated[Repeatable, Flag("--model", metavar="ID[=PATH]")] = Field(
        (),
        description="model to serve (repeatable): ID loads it from the Hugging Face cache, ID=PATH from a "
        "local checkpoint; the first is the default",
    )
    demo: bool = Field(
        False,
        description="serve a tiny RANDOM-WEIGHT test model as flux.2-klein-4b (built on first use; "
        "no weights)",
    )
    device: str | None = Field(None, description="cuda, cuda:1, cpu (default: cuda if available)")
    dtype: Annotated[str | None, Flag(choices=DTYPES)] = Field(
        None, description="default: bfloat16 on CUDA, float32 on CPU"
    )
    allow_download: Annotated[bool, Flag("--no-download")] = Field(
        True, description="download weights missing from the Hugging Face cache"
    )
    warmup: bool = Field(True, description="generate once per model at start-up, before /ready says yes")

    host: Annotated[str, Flag(metavar="ADDRESS")] = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, description="port to listen on")
    public_base_url: Annotated[str | None, Flag(metavar="URL")] = Field(
        None, description="base of image URLs, e.g. https://img.example.com (default: the request's own host)"
    )
    ssl_certfile: Annotated[Path | None, Flag(metavar="FILE")] = Field(
        None, description="serve HTTPS with this certificate (PEM; give --ssl-keyfile too)"
    )
    ssl_keyfile: Annotated[Path | None, Flag(metavar="FILE")] = Field(
        None, description="the certificate's private key (PEM)"
    )

    # Host names the server answers to (Host header); empty: any, and returned URLs copy the Host header
    # unless public_base_url is set. Forwarding headers (X-Forwarded-For/-Proto) are believed only from
    # these proxy addresses; empty: from none.
    allowed_hosts: Annotated[Repeatable, Flag("--allowed-host", metavar="NAME")] = Field(
        (), description="a host name clients use for this server (repeatable); others get 400 (default: any)"
    )
    trusted_proxies: Annotated[Repeatable, Flag("--trusted-proxy", metavar="ADDRESS")] = Field(
        (), description="believe X-Forwarded-For/-Proto only from this proxy (repeatable; default: from none)"
    )
    # Slow clients and shutdown.
    header_timeout_s: float = Field(
        10.0, gt=0, description="seconds a client has to send the whole request head after connecting"
    )
    body_timeout_s: float = Field(30.0, gt=0, description="longest pause in seconds while a body is sent")
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="on SIGTERM, seconds running batches get to finish before they are stopped"
    )

    data_dir: Annotated[Path, Flag(metavar="DIR")] = Field(
        default_factory=default_data_dir,
        description="jobs database and stored images (default: ~/.local/share/kleinserve)",
    )
    retention_hours: float = Field(24.0, description="delete jobs and images older than this (0: never)")
    database_url: Annotated[str | None, Flag(metavar="postgresql://...")] = Field(
        None,
        description="keep jobs in this PostgreSQL database, shared by every process given it (default: "
        "SQLite in --data-dir, this process's alone)",
    )
    # The image store (storage/: store.py, s3.py). S3 credentials, region and endpoint come from the standard
    # AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL), read by boto3.
    store: Annotated[str, Flag(metavar="local|s3://BUCKET/PREFIX")] = Field(
        "local",
        description="where images are kept: local (files under --data-dir) or an S3 bucket and key prefix, "
        "configured by the standard AWS_* variables",
    )
    presign_expiry_s: int = Field(
        3600,
        ge=1,
        le=7 * 24 * 3600,
        description="with an S3 store, seconds a returned (presigned) image URL works; at most 604800 "
        "(7 days)",
    )
    store_public_url: Annotated[str | None, Flag(metavar="URL")] = Field(
        None,
        description="with an S3 store, return plain URLs URL/PREFIX/KEY (a public bucket or a CDN in front "
        "of it) instead of presigned ones",
    )

    api_keys: Annotated[Repeatable, Flag("--api-key", metavar="KEY")] = Field(
        (),
        description="a key clients must send (repeatable; none: the API is open to anyone who can reach it)",
    )
    admin_key: Annotated[str | None, Flag(metavar="KEY")] = Field(
        None,
        description="a key that also sees every key's usage in GET /v1/usage; valid for every endpoint (with "
        "no --api-key, it is the only key and the API is no longer open)",
    )
    prices: Annotated[Repeatable, Flag("--price", metavar="MODEL=USD[/image]")] = Field(
        (),
        description="what a model costs, in US dollars per megapixel (MODEL=0.012 or MODEL=0.012/mp) or per "
        "image (MODEL=0.02/image), for GET /v1/usage (repeatable; default: no prices, no cost)",
    )
    rate_limit_per_minute: int = Field(
        0, description="requests per minute per API key (or client address when open); 0 = unlimited"
    )
    max_request_bytes: int = Field(40 * MiB, description="largest request body in bytes (413 beyond)")
    max_image_bytes: int = Field(
        20 * MiB, description="largest reference image in bytes, uploaded or downloaded from image_urls"
    )

    max_batch_images: int = Field(8, description="most images generated in one engine batch")
    batch_wait_ms: float = Field(10.0, description="how long a lone request waits for compatible company")
    max_queue_depth: int = Field(64, description="queued jobs per model before new work gets 503")
    # Durable job queue.
    job_lease_s: float = Field(
        30.0,
        gt=0,
        description="seconds a running job's worker may go silent before the job is queued again for "
        "another attempt",
    )
    max_attempts: int = Field(
        3,
        ge=1,
        description="attempts a queued job gets when its worker dies, before it fails with the reason",
    )
    # Roles (scaled out: API servers apart from workers; worker.py, worker_models.py). Workers report
    # themselves every worker_heartbeat_s; an API server counts a worker as live for worker_ttl_s after that.
    role: Annotated[str, Flag(choices=("all", "api"))] = Field(
        "all",
        pattern="^(all|api)$",
        description="all: one process serves HTTP and runs the models; api: HTTP only, no models loaded, "
        "jobs run by `kleinserve worker` processes sharing --database-url",
    )
    worker_heartbeat_s: float = Field(
        2.0, gt=0, description="seconds between a worker's heartbeats (which models it serves, their state)"
    )
    worker_ttl_s: float = Field(
        10.0,
        gt=0,
        description="seconds after its last heartbeat an API server still counts a worker (and its models) "
        "as live",
    )
    worker_metrics_port: int | None = Field(
        None,
        description="`kleinserve worker` only: serve its Prometheus metrics (batches, stages, images, jobs) "
        "at http://HOST:PORT/metrics (default: none)",
    )
    inline_result_ttl_s: float = Field(
        600.0,
        gt=0,
        description="seconds inline results (sync_mode, b64_json) are kept in the job store for a queue "
        "client to collect",
    )

    # Speed levers (engine/optimize.py).
    prompt_cache_size: int = Field(
        16, ge=0, description="prompt embeddings kept per model (0: off; 7.5 MiB each for 4B)"
    )
    offload: Annotated[str | None, Flag(metavar="text-encoder", choices=OFFLOADABLE)] = Field(
        None,
        pattern="^text-encoder$",
        description="keep a part off the GPU between prompts: text-encoder lives in CPU memory and is moved "
        "to the GPU only to encode a prompt the prompt cache lacks (then back; `kleinserve plan` shows the "
        "memory; default: all on the GPU)",
    )
    compile: bool | None = Field(
        None,
        description="regional torch.compile of the transformer blocks, and on CUDA of the VAE decoder too "
        "(default: on for CUDA, off for CPU)",
    )
    attention_backend: Annotated[str | None, Flag(metavar="NAME")] = Field(
        None, description="diffusers attention backend, e.g. _native_cudnn, flash (default: PyTorch SDPA)"
    )
    quantize: Annotated[str | None, Flag(choices=QUANTIZATIONS)] = Field(
        None,
        pattern="^fp8$",
        description="fp8: the transformer blocks' linears in float8 with per-channel scales; fp8 matmuls on "
        "GPUs that have them (compute capability 8.9+, bfloat16), weight-only elsewhere (default: off)",
    )
    quantize_text_encoder: Annotated[str | None, Flag(choices=QUANTIZATIONS)] = Field(
        None,
        pattern="^fp8$",
        description="fp8: the text encoder's layer linears, as --quantize (default: off)",
    )
    warmup_sizes: Annotated[Repeatable, Flag("--warmup-size", metavar="WxH")] = Field(
        (),
        description="generate once at start-up at this size (repeatable; default: 256x256, or the common "
        "sizes when compiling)",
    )

    stats_window_seconds: float = Field(3600.0, description="the span /stats reports over")

    # The safety checker. If it cannot be loaded the server does not start, unless safety_checker is False.
    safety_checker: bool = Field(
        True,
        description="check outputs with the NSFW classifier when fal's enable_safety_checker asks (and "
        "OpenAI outputs with --safety-check-openai); the server does not start without it",
    )
    safety_model: Annotated[str, Flag(metavar="REPO|DIR")] = Field(
        DEFAULT_SAFETY_MODEL, description="image-classification repo id (Hugging Face cache) or directory"
    )
    safety_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="flag images at this unsafe probability (0 flags all)"
    )
    safety_check_openai: bool = Field(False, description="also check OpenAI API outputs")

    # Outbound requests made for users (fal image_urls, webhooks) never go to loopback, private,
    # link-local or other internal addresses, except networks listed here.
    allowed_private_networks: Annotated[Repeatable, Flag("--allow-private-network", metavar="CIDR")] = Field(
        (),
        description="let image_urls and webhooks reach this internal network, e.g. 10.1.0.0/16 "
        "(repeatable; default: none)",
    )
    image_fetch_timeout_s: float = Field(15.0, gt=0, description="seconds per image_url download")
    webhook_attempts: int = Field(5, ge=1, description="deliveries tried per webhook")
    webhook_retry_base_s: float = Field(
        1.0, ge=0, description="seconds before the first webhook retry, doubling after each"
    )
    webhook_timeout_s: float = Field(
        10.0, gt=0, description="seconds a webhook receiver has to answer one delivery"
    )
    webhook_secret: Annotated[str | None, Flag(metavar="whsec_BASE64")] = Field(
        None,
        description="sign webhooks with this Standard Webhooks secret, whsec_ and 24-64 base64 bytes, the "
        "same on every API server (default: one made on first start, kept in --data-dir/webhook-secret)",
    )
    # Per-request LoRA (README "LoRA"): loras[i].path is an http(s) URL, a file in --lora-dir or a HF repo id.
    lora_dir: Annotated[Path | None, Flag(metavar="DIR")] = Field(
        None, description="LoRA .safetensors files requests may name by file name (default: none)"
    )
    lora_cache_mb: int = Field(
        1024,
        ge=0,
        description="MiB of parsed LoRA adapters kept in memory per model, least recently used out",
    )
    lora_max_mb: int = Field(
        2048, ge=1, description="largest LoRA file in MiB downloaded from a URL (kept under --data-dir/loras)"
    )

    @field_validator(
        "models", "api_keys", "allowed_private_networks", "warmup_sizes", "allowed_hosts", "trusted_proxies",
        "prices",
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

    @field_validator("admin_key")
    @classmethod
    def _real_admin_key(cls, key: str | None, info) -> str | None:
        if key is not None and (not key.strip() or key != key.strip()):
            raise ValueError("the admin key must not be empty or start or end with whitespace")
        if key is not None and key in info.data.get("api_keys", ()):
            raise ValueError("the admin key must differ from every --api-key")
        return key

    @field_validator("prices")
    @classmethod
    def _readable_prices(cls, prices: tuple[str, ...]) -> tuple[str, ...]:
        parse_prices(prices)  # InvalidPrice (a ValueError) says which entry and the accepted forms
        return prices

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: str | None) -> str | None:
        if value is not None:
            from kleinserve.webhook_signing import key_bytes

            key_bytes(value)  # ValueError naming the expected form
        return value

    @field_validator("store")
    @classmethod
    def _store_location(cls, value: str) -> str:
        if value != "local":
            from kleinserve.store_location import S3Location

            S3Location.parse(value)  # ValueError naming the accepted forms
        return value

    @field_validator("store_public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("give an http:// or https:// URL, e.g. https://images.example.com")
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                "give a PostgreSQL URL, e.g. postgresql://user:password@host:5432/kleinserve (leave it out "
                "to keep jobs in SQLite under --data-dir)"
            )
        return value

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
    def lora_cache_dir(self) -> Path:
        """Downloaded LoRA files, by content hash (and an index by URL)."""
        return self.data_dir / "loras"

    @property
    def demo_safety_dir(self) -> Path:
        return self.data_dir / "demo-safety-classifier"

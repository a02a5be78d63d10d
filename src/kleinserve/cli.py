"""The `kleinserve` command: serve | generate | tiny-checkpoint.

Bad input exits non-zero with one clear line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from kleinserve.errors import InvalidRequest, KleinserveError
from kleinserve.imaging import EXTENSIONS, OUTPUT_FORMATS, encode_image, read_image_file
from kleinserve.models import Variant, resolve_model
from kleinserve.request import build_request, parse_size

EXIT_USAGE = 2
EXIT_FAILED = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + error
        self.exit(EXIT_USAGE, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kleinserve", description="Serve and run the FLUX.2 [klein] image models.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = commands.add_parser("generate", help="generate or edit an image")
    gen.add_argument("prompt")
    gen.add_argument("--model", required=True, help="registry id or alias, or a checkpoint directory")
    gen.add_argument("--image", action="append", default=[], metavar="FILE", help="reference image (up to 4)")
    gen.add_argument(
        "--size",
        help="WIDTHxHEIGHT, multiples of 16 from 64 to 2048 (default: 1024x1024, "
        "or the first reference image's size)",
    )
    gen.add_argument("--steps", type=int)
    gen.add_argument("--guidance", type=float, help="CFG scale (Base models only)")
    gen.add_argument("--negative-prompt", help="what to steer away from (Base models only)")
    gen.add_argument("--seed", type=int)
    gen.add_argument("--n", type=int, default=1, help="number of images (files get -0, -1, ...)")
    gen.add_argument("--output-format", choices=sorted(OUTPUT_FORMATS), help="default: from -o's extension")
    gen.add_argument("-o", "--output", required=True, metavar="OUT")
    gen.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    gen.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        help="default: bfloat16 on CUDA, float32 on CPU",
    )
    gen.add_argument("--no-download", action="store_true", help="use only weights already on disk")

    _add_serve_parser(commands)

    tiny = commands.add_parser("tiny-checkpoint", help="write a tiny random checkpoint in the real layout")
    tiny.add_argument("directory")
    tiny.add_argument("--variant", choices=[v.value for v in Variant], default=Variant.DISTILLED.value)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return generate(args)
        if args.command == "serve":
            return serve(args)
        return tiny_checkpoint(args)
    except KleinserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, InvalidRequest) else EXIT_FAILED
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: still one line, traceback on request
        if os.environ.get("KLEINSERVE_DEBUG"):
            raise
        print(
            f"error: internal {type(exc).__name__}: {exc} (set KLEINSERVE_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED


def generate(args: argparse.Namespace) -> int:
    from kleinserve.engine import Engine

    spec = resolve_model(args.model)
    fmt = _output_format(args.output, args.output_format)
    images = [read_image_file(path, field="--image") for path in args.image]
    width, height = parse_size(args.size, "--size") if args.size else (None, None)
    request = build_request(
        spec,
        prompt=args.prompt,
        images=images,
        width=width,
        height=height,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        num_images=args.n,
        negative_prompt=args.negative_prompt,
    )
    paths = _output_paths(Path(args.output), fmt, request.num_images)
    engine = Engine.load(spec, device=args.device, dtype=args.dtype, allow_download=not args.no_download)
    show_progress = sys.stderr.isatty()

    def progress(p):
        if show_progress:
            end = "\n" if p.step == p.total_steps else ""
            print(f"\rstep {p.step}/{p.total_steps}", end=end, file=sys.stderr, flush=True)

    result = engine.generate([request], on_step=progress)[0]
    start = time.perf_counter()
    for path, image in zip(paths, result.images, strict=True):
        try:
            path.write_bytes(encode_image(image, fmt))
        except OSError as exc:
            raise InvalidRequest("-o", f"cannot write {path}: {exc.strerror or exc}") from exc
    timings = {**result.timings, "encode": time.perf_counter() - start}
    seeds = (
        f"{request.seed}" if request.num_images == 1 else f"{request.seed} (image i uses {request.seed} + i)"
    )
    print(f"seed: {seeds}")
    print("timings: " + ", ".join(f"{stage} {seconds * 1000:.0f} ms" for stage, seconds in timings.items()))
    for path in paths:
        print(f"wrote {path} ({request.width}x{request.height} {fmt})")
    return 0


def _output_format(output: str, requested: str | None) -> str:
    from_extension = EXTENSIONS.get(Path(output).suffix.lower())
    if requested and from_extension and requested != from_extension:
        raise InvalidRequest("--output-format", f"{requested} does not match the extension of {output}")
    return requested or from_extension or "png"


def _output_paths(output: Path, fmt: str, count: int) -> list[Path]:
    if output.is_dir():
        raise InvalidRequest("-o", f"{output} is a directory; give a file name such as {output}/image.{fmt}")
    if output.suffix.lower() not in EXTENSIONS:
        output = output.with_name(output.name + (".jpg" if fmt == "jpeg" else f".{fmt}"))
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidRequest("-o", f"cannot create {output.parent}: {exc.strerror or exc}") from exc
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]


def _add_serve_parser(commands) -> None:
    serve = commands.add_parser("serve", help="run the HTTP server (OpenAI Images API and fal API)")
    serve.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="ID[=PATH]",
        help="model to serve (repeatable): ID loads it from the Hugging Face cache, ID=PATH from a local "
        "checkpoint; the first is the default",
    )
    serve.add_argument(
        "--demo",
        action="store_true",
        help="serve a tiny RANDOM-WEIGHT test model as flux.2-klein-4b (built on first use; no weights)",
    )
    serve.add_argument("--host", help="default 127.0.0.1")
    serve.add_argument("--port", type=int, help="default 8000")
    serve.add_argument(
        "--data-dir", help="jobs database and stored images (default ~/.local/share/kleinserve)"
    )
    serve.add_argument("--public-base-url", help="base of image URLs, e.g. https://img.example.com")
    serve.add_argument("--api-key", action="append", dest="api_keys", metavar="KEY", help="repeatable")
    serve.add_argument("--ssl-certfile")
    serve.add_argument("--ssl-keyfile")
    serve.add_argument(
        "--retention-hours", type=float, help="delete jobs and images older than this (0: never)"
    )
    serve.add_argument("--rate-limit-per-minute", type=int, help="per API key or client; 0 = unlimited")
    serve.add_argument("--max-batch-images", type=int)
    serve.add_argument("--batch-wait-ms", type=float)
    serve.add_argument("--max-queue-depth", type=int)
    serve.add_argument("--max-request-bytes", type=int)
    serve.add_argument(
        "--prompt-cache-size", type=int, help="prompt embeddings kept per model (default 16; 0 off)"
    )
    serve.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="regional torch.compile of the transformer blocks (default: on for CUDA, off for CPU)",
    )
    serve.add_argument("--attention-backend", help="diffusers attention backend, e.g. _native_cudnn, flash")
    serve.add_argument(
        "--warmup-size",
        action="append",
        dest="warmup_sizes",
        metavar="WxH",
        help="generate once at start-up at this size (repeatable)",
    )
    serve.add_argument("--device")
    serve.add_argument("--dtype", choices=["bfloat16", "float16", "float32"])
    serve.add_argument("--no-download", dest="allow_download", action="store_false", default=None)
    serve.add_argument("--no-warmup", dest="warmup", action="store_false", default=None)
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _add_safety_and_outbound_options(serve)
    _add_network_options(serve)


def _add_network_options(serve) -> None:
    serve.add_argument(
        "--allowed-host",
        action="append",
        dest="allowed_hosts",
        metavar="NAME",
        help="a host name clients use for this server (repeatable); others get 400 (default: any)",
    )
    serve.add_argument(
        "--trusted-proxy",
        action="append",
        dest="trusted_proxies",
        metavar="ADDRESS",
        help="believe X-Forwarded-For/-Proto only from this proxy (repeatable; default: from none)",
    )
    serve.add_argument("--header-timeout-s", type=float, help="time to send the request head (default 10)")
    serve.add_argument("--body-timeout-s", type=float, help="longest pause while sending a body (default 30)")
    serve.add_argument(
        "--shutdown-grace-s", type=float, help="on SIGTERM, time for running batches to finish (default 30)"
    )


def _add_safety_and_outbound_options(serve) -> None:
    serve.add_argument(
        "--no-safety-checker",
        dest="safety_checker",
        action="store_false",
        default=None,
        help="run without the NSFW classifier (fal's enable_safety_checker is then ignored)",
    )
    serve.add_argument(
        "--safety-model",
        help="image-classification repo id or directory (default Falconsai/nsfw_image_detection)",
    )
    serve.add_argument("--safety-threshold", type=float, help="flag at this unsafe probability (default 0.5)")
    serve.add_argument(
        "--safety-check-openai", action="store_true", default=None, help="also check OpenAI API outputs"
    )
    serve.add_argument(
        "--allow-private-network",
        action="append",
        dest="allowed_private_networks",
        metavar="CIDR",
        help="let image_urls and webhooks reach this internal network (repeatable; default: none)",
    )
    serve.add_argument("--image-fetch-timeout-s", type=float, help="per image_url download (default 15)")
    serve.add_argument("--webhook-attempts", type=int, help="deliveries tried per webhook (default 5)")
    serve.add_argument("--webhook-retry-base-s", type=float, help="first retry delay, doubling (default 1)")


SERVE_SETTINGS = (
    "models", "demo", "host", "port", "data_dir", "public_base_url", "api_keys", "ssl_certfile",
    "ssl_keyfile", "retention_hours", "rate_limit_per_minute", "max_batch_images", "batch_wait_ms",
    "max_queue_depth", "prompt_cache_size", "compile", "attention_backend", "warmup_sizes",
    "max_request_bytes", "device", "dtype", "allow_download", "warmup", "safety_checker", "safety_model",
    "safety_threshold", "safety_check_openai", "allowed_private_networks", "image_fetch_timeout_s",
    "webhook_attempts", "webhook_retry_base_s", "allowed_hosts", "trusted_proxies", "header_timeout_s",
    "body_timeout_s", "shutdown_grace_s",
)  # fmt: skip


def serve(args: argparse.Namespace) -> int:
    import logging

    from pydantic import ValidationError

    from kleinserve.api.app import create_app
    from kleinserve.engine.optimize import check_attention_backend
    from kleinserve.engine.warmup import check_weights
    from kleinserve.outbound import check_networks
    from kleinserve.safety import locate_safety_model
    from kleinserve.service import served_specs
    from kleinserve.settings import Settings

    given = {name: getattr(args, name) for name in SERVE_SETTINGS if getattr(args, name) is not None}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidRequest("--" + str(first["loc"][0]).replace("_", "-"), first["msg"]) from exc
    if bool(settings.ssl_certfile) != bool(settings.ssl_keyfile):
        raise InvalidRequest("--ssl-certfile", "give both --ssl-certfile and --ssl-keyfile, or neither")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(message)s")
    for spec, demo in served_specs(settings):
        if not demo:
            check_weights(spec, settings)
    check_networks(settings.allowed_private_networks)
    for size in settings.warmup_sizes:
        parse_size(size, "--warmup-size")
    if settings.attention_backend:
        check_attention_backend(settings.attention_backend)
    if settings.safety_checker:
        locate_safety_model(settings)
    from kleinserve import server

    server.run(create_app(settings), settings, args.log_level)
    return 0


def tiny_checkpoint(args: argparse.Namespace) -> int:
    from kleinserve.tiny import write_tiny_checkpoint

    directory = write_tiny_checkpoint(args.directory, Variant(args.variant))
    print(f"wrote a tiny {args.variant} checkpoint to {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `kleinserve` command: generate | serve | worker | ray-deploy | plan | tiny-checkpoint.

Bad input exits non-zero with one clear line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from kleinserve.cli.plan import add_plan_parser, plan
from kleinserve.cli.setting_flags import add_setting_flag, setting_flags, settings_from_args
from kleinserve.errors import InvalidRequest, KleinserveError
from kleinserve.imaging import EXTENSIONS, OUTPUT_FORMATS, encode_image, read_image_file
from kleinserve.models import Variant, resolve_model
from kleinserve.request import build_request, parse_size
from kleinserve.settings import DTYPES, Settings

__all__ = ["build_parser", "main", "setting_flags", "settings_from_args"]

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
        choices=DTYPES,
        help="default: bfloat16 on CUDA, float32 on CPU",
    )
    gen.add_argument("--no-download", action="store_true", help="use only weights already on disk")

    _add_serve_parser(commands)
    _add_worker_parser(commands)
    _add_ray_deploy_parser(commands)
    add_plan_parser(commands)

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
        if args.command == "worker":
            return worker(args)
        if args.command == "ray-deploy":
            return ray_deploy(args)
        if args.command == "plan":
            return plan(args)
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
    serve = commands.add_parser(
        "serve",
        help="run the HTTP server (OpenAI Images API and fal API)",
        epilog="Every setting can also come from the environment as KLEINSERVE_<NAME> (e.g. "
        "KLEINSERVE_API_KEYS=k1,k2 for --api-key); flags win.",
    )
    for name, flag in setting_flags().items():
        add_setting_flag(serve, name, flag)
    serve.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="default info"
    )


def serve(args: argparse.Namespace) -> int:
    import logging

    from kleinserve.engine.optimize import check_attention_backend
    from kleinserve.service.engine_startup import check_weights
    from kleinserve.service.outbound import check_networks
    from kleinserve.service.safety import locate_safety_model
    from kleinserve.service.served_models import served_specs

    settings = settings_from_args(args)
    if bool(settings.ssl_certfile) != bool(settings.ssl_keyfile):
        raise InvalidRequest("--ssl-certfile", "give both --ssl-certfile and --ssl-keyfile, or neither")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(message)s")
    if settings.role == "api":
        _check_api_role(settings)
    for spec, demo in served_specs(settings) if settings.role == "all" else ():
        if not demo:
            check_weights(spec, settings)
    check_networks(settings.allowed_private_networks)
    for size in settings.warmup_sizes:
        parse_size(size, "--warmup-size")
    if settings.attention_backend:
        check_attention_backend(settings.attention_backend)
    if settings.safety_checker and settings.role == "all":  # in split roles, workers check images
        locate_safety_model(settings)
    from kleinserve.roles import server

    server.run(server.build_app(settings), settings, args.log_level)
    return 0


def _add_ray_deploy_parser(commands) -> None:
    deploy = commands.add_parser(
        "ray-deploy",
        help="deploy the API and one autoscaled engine application per model on a Ray cluster (Ray Serve)",
        epilog="Takes every `serve` flag: the API replicas run with --role api, each engine replica runs a "
        "worker for one --model. Needs --database-url (the shared queue) and the `scale` extra. Ray's token "
        "comes from RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (README: Scaling out).",
    )
    for name, flag in setting_flags().items():
        add_setting_flag(deploy, name, flag)
    ray = deploy.add_argument_group("Ray Serve placement")
    for flag, kind, default, help_text in RAY_PLACEMENT_FLAGS:
        ray.add_argument(flag, type=kind, default=default, metavar="N", help=help_text)
    ray.add_argument(
        "--ray-address",
        default="auto",
        metavar="HOST:PORT",
        help="the Ray head's GCS address (default: the cluster `ray start` runs here)",
    )
    ray.add_argument("--proxy-location", choices=["HeadOnly", "EveryNode"], default="HeadOnly",
                     help="Serve's HTTP proxy on the head only, listening on --host (default), or on every "
                     "machine (then --host 0.0.0.0)")  # fmt: skip


RAY_PLACEMENT_FLAGS = [  # (flag, type, default, help) of `ray-deploy`'s Placement
    ("--api-replicas", int, 1, "HTTP server replicas (default 1)"),
    ("--min-engine-replicas", int, 1, "engine replicas per model, fewest (at least 1; default 1)"),
    ("--max-engine-replicas", int, 1, "engine replicas per model at most (default 1)"),
    ("--jobs-per-engine-replica", int, None,
     "queued + running jobs that make one more engine replica (default --max-batch-images)"),
    ("--engine-gpus", float, 1.0, "GPUs per engine replica (0 on CPU; default 1)"),
    ("--upscale-delay-s", float, 0.0,
     "seconds the queue must ask for more replicas before they start (default 0)"),
    ("--downscale-delay-s", float, 300.0,
     "seconds the queue must ask for fewer replicas before one stops (default 300)"),
]  # fmt: skip


def ray_deploy(args: argparse.Namespace) -> int:
    import logging

    from kleinserve.service.served_models import served_specs

    settings = settings_from_args(args)
    if not settings.database_url:
        raise InvalidRequest("--database-url", "ray-deploy needs PostgreSQL: the replicas share its queue")
    if args.api_replicas < 1:
        raise InvalidRequest("--api-replicas", "must be at least 1")
    if not 1 <= args.min_engine_replicas <= args.max_engine_replicas:
        raise InvalidRequest("--min-engine-replicas", "give 1 <= it <= --max-engine-replicas")
    if args.jobs_per_engine_replica is not None and args.jobs_per_engine_replica < 1:
        raise InvalidRequest("--jobs-per-engine-replica", "must be at least 1")
    served_specs(settings)  # unknown models fail here, not on the cluster
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    try:
        from kleinserve.roles.ray_serve import Placement, deploy
    except ImportError as exc:
        raise InvalidRequest("ray-deploy", f"Ray Serve is missing ({exc}): needs kleinserve[scale]") from exc
    placement = Placement(
        api_replicas=args.api_replicas,
        min_engine_replicas=args.min_engine_replicas,
        max_engine_replicas=args.max_engine_replicas,
        jobs_per_engine_replica=args.jobs_per_engine_replica,
        engine_gpus=args.engine_gpus,
        upscale_delay_s=args.upscale_delay_s,
        downscale_delay_s=args.downscale_delay_s,
        proxy_location=args.proxy_location,
    )
    apps = deploy(settings, placement, args.ray_address)
    scheme = "https" if settings.ssl_certfile else "http"
    print(f"deployed {', '.join(apps)}; the API answers on {scheme}://{settings.host}:{settings.port}")
    return 0


def _check_api_role(settings: Settings) -> None:
    if not settings.database_url:
        raise InvalidRequest(
            "--database-url", "--role api answers from the job store its workers share: give its URL"
        )
    if settings.models or settings.demo:
        flag = "--model" if settings.models else "--demo"
        raise InvalidRequest(flag, "--role api loads no model; give it to `kleinserve worker` instead")


def _add_worker_parser(commands) -> None:
    worker = commands.add_parser(
        "worker",
        help="run the models for API servers started with `serve --role api` (no HTTP)",
        epilog="Takes `serve`'s flags except --role; needs --database-url, the job store it shares with "
        "the API servers (README: Roles). Stops on SIGTERM or SIGINT, giving running jobs back to the queue.",
    )
    for name, flag in setting_flags().items():
        if name != "role":
            add_setting_flag(worker, name, flag)
    worker.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="default info"
    )


def worker(args: argparse.Namespace) -> int:
    import logging

    from kleinserve.roles import worker as worker_process
    from kleinserve.service.safety import locate_safety_model
    from kleinserve.service.served_models import served_specs
    from kleinserve.simulated_engine import simulated_engine_ms

    settings = settings_from_args(args)
    if not settings.database_url:
        raise InvalidRequest(
            "--database-url", "a worker shares its jobs with API servers: give the PostgreSQL database's URL"
        )
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(message)s")
    if simulated_engine_ms() is None:  # the capacity benchmark's stand-in needs no weights (nor torch)
        from kleinserve.service.engine_startup import check_weights

        for spec, demo in served_specs(settings):
            if not demo:
                check_weights(spec, settings)
    if settings.safety_checker:
        locate_safety_model(settings)
    worker_process.run(settings)
    return 0


def tiny_checkpoint(args: argparse.Namespace) -> int:
    from kleinserve.tiny import write_tiny_checkpoint

    directory = write_tiny_checkpoint(args.directory, Variant(args.variant))
    print(f"wrote a tiny {args.variant} checkpoint to {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

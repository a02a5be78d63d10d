"""The `kleinserve` command: serve | generate | tiny-checkpoint.

Bad input exits non-zero with one clear line."""

from __future__ import annotations

import argparse
import os
import sys
import time
import types
import typing
from pathlib import Path

from pydantic_core import PydanticUndefined

from kleinserve.errors import InvalidRequest, KleinserveError
from kleinserve.imaging import EXTENSIONS, OUTPUT_FORMATS, encode_image, read_image_file
from kleinserve.models import Variant, resolve_model
from kleinserve.request import build_request, parse_size
from kleinserve.settings import DTYPES, Flag, Settings

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
    serve = commands.add_parser(
        "serve",
        help="run the HTTP server (OpenAI Images API and fal API)",
        epilog="Every setting can also come from the environment as KLEINSERVE_<NAME> (e.g. "
        "KLEINSERVE_API_KEYS=k1,k2 for --api-key); flags win.",
    )
    for name, flag in setting_flags().items():
        _add_setting_flag(serve, name, flag)
    serve.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="default info"
    )


def setting_flags() -> dict[str, str]:
    """Each Settings field's `serve` flag: --NAME, or what its Flag says (--model, --no-download, ...)."""
    flags = {}
    for name, field in Settings.model_fields.items():
        flag = _flag_of(field)
        if flag.name:
            flags[name] = flag.name
        elif _bare_type(field.annotation) is bool and field.default is True:
            flags[name] = "--no-" + name.replace("_", "-")
        else:
            flags[name] = "--" + name.replace("_", "-")
    return flags


def _flag_of(field) -> Flag:
    return next((item for item in field.metadata if isinstance(item, Flag)), Flag())


def _bare_type(annotation):
    """int for int, int | None and Annotated[int, ...]; tuple for tuple[str, ...]."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _bare_type(args[0])
    return typing.get_origin(annotation) or annotation


def _add_setting_flag(serve: argparse.ArgumentParser, name: str, option: str) -> None:
    """One flag from one Settings field: its help is the field's description. Every flag defaults to None,
    meaning "not given", so the environment and then the field's default apply."""
    field = Settings.model_fields[name]
    flag = _flag_of(field)
    kind, optional = _bare_type(field.annotation), type(None) in typing.get_args(field.annotation)
    help_text = (field.description or "").replace("%", "%%")
    options: dict = {"dest": name, "default": None, "help": help_text}
    if kind is bool and optional:  # None means automatic: --NAME / --no-NAME
        options["action"] = argparse.BooleanOptionalAction
    elif kind is bool:
        options["action"] = "store_false" if field.default else "store_true"
        if field.default:
            options["help"] = f"turns off what is on by default: {help_text}"
    else:
        if kind is tuple:
            options["action"] = "append"
        else:
            options["type"] = kind if kind in (int, float) else str
        default = field.default
        if default is not None and default != () and default is not PydanticUndefined:
            options["help"] = f"{help_text} (default {_shown(default)})"
        if flag.metavar or kind in (int, float):
            options["metavar"] = flag.metavar or "N"
        if flag.choices:
            options["choices"] = flag.choices
    serve.add_argument(option, **options)


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the flags given, over KLEINSERVE_* variables, over the defaults; a bad value names its
    flag."""
    from pydantic import ValidationError

    given = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name) is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        raise InvalidRequest(setting_flags().get(name, "--" + name.replace("_", "-")), first["msg"]) from exc


def serve(args: argparse.Namespace) -> int:
    import logging

    from kleinserve.api.app import create_app
    from kleinserve.engine.optimize import check_attention_backend
    from kleinserve.engine_startup import check_weights
    from kleinserve.outbound import check_networks
    from kleinserve.safety import locate_safety_model
    from kleinserve.served_models import served_specs

    settings = settings_from_args(args)
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

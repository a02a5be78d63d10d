"""The flags of `serve`, `worker` and `ray-deploy`, read off the Settings fields: one flag per field, its help
the field's description, and Settings built back from the flags given (over KLEINSERVE_* variables, over the
defaults), a bad value naming its flag."""

from __future__ import annotations

import argparse
import types
import typing

from pydantic_core import PydanticUndefined

from kleinserve.errors import InvalidRequest
from kleinserve.settings import Flag, Settings


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


def add_setting_flag(serve: argparse.ArgumentParser, name: str, option: str) -> None:
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

    given = {name: getattr(args, name, None) for name in Settings.model_fields}  # `worker` has no --role
    given = {name: value for name, value in given.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        raise InvalidRequest(setting_flags().get(name, "--" + name.replace("_", "-")), first["msg"]) from exc

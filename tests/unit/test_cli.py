"""`kleinserve serve`: one flag per setting, with its description as help; a bad value is one line
naming its flag."""

import argparse
import re
from pathlib import Path

import pytest

from kleinserve.cli import build_parser, setting_flags, settings_from_args
from kleinserve.settings import Settings

from support.command_line import run

# `kleinserve serve` flags: one per Settings field, derived from it ---------------------------------------


def serve_actions() -> dict[str, argparse.Action]:
    """The serve subcommand's options, by destination (the Settings field they fill)."""
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {action.dest: action for action in commands.choices["serve"]._actions if action.option_strings}


def settings_of(*flags: str) -> Settings:
    return settings_from_args(build_parser().parse_args(["serve", *flags]))


def test_every_setting_has_a_flag_with_its_description_as_help():
    actions, flags = serve_actions(), setting_flags()
    for name, field in Settings.model_fields.items():
        assert field.description, f"Settings.{name} has no description (its --help text)"
        assert name in actions, f"Settings.{name} has no serve flag"
        assert flags[name] in actions[name].option_strings
        assert field.description.replace("%", "%%") in actions[name].help
    assert set(actions) - set(Settings.model_fields) == {"help", "log_level"}


def test_the_readme_synopsis_lists_every_serve_flag():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    synopsis = re.search(r"```sh\n(kleinserve serve .+?)```", readme, re.S).group(1)
    listed = set(re.findall(r"--[a-z][a-z-]*", synopsis))
    options = {option for action in serve_actions().values() for option in action.option_strings}
    assert listed <= options, listed - options
    assert set(setting_flags().values()) <= listed


def test_no_flags_give_the_defaults_and_flags_win_over_the_environment(monkeypatch):
    assert settings_of() == Settings()
    monkeypatch.setenv("KLEINSERVE_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("KLEINSERVE_DEMO", "true")
    assert settings_of().max_attempts == 7 and settings_of().demo
    assert settings_of("--max-attempts", "2").max_attempts == 2


def test_the_queue_flags_parse():
    settings = settings_of("--job-lease-s", "12.5", "--max-attempts", "5", "--inline-result-ttl-s", "60")
    assert (settings.job_lease_s, settings.max_attempts, settings.inline_result_ttl_s) == (12.5, 5, 60.0)
    defaults = settings_of()
    assert (defaults.job_lease_s, defaults.max_attempts, defaults.inline_result_ttl_s) == (30.0, 3, 600.0)


def test_repeatable_switched_and_typed_flags_keep_their_shapes(tmp_path):
    settings = settings_of(
        "--model", "flux.2-klein-4b", "--model", f"flux.2-klein-base-4b={tmp_path}",
        "--api-key", "k1", "--api-key", "k2", "--warmup-size", "64x64", "--allowed-host", "img.example.com",
        "--trusted-proxy", "10.0.0.1", "--allow-private-network", "10.1.0.0/16",
        "--no-download", "--no-warmup", "--no-safety-checker", "--safety-check-openai", "--demo",
        "--compile", "--dtype", "float16", "--port", "9000", "--data-dir", str(tmp_path),
        "--webhook-timeout-s", "2.5", "--max-image-bytes", "1024", "--stats-window-seconds", "60",
    )  # fmt: skip
    assert settings.models == ("flux.2-klein-4b", f"flux.2-klein-base-4b={tmp_path}")
    assert settings.api_keys == ("k1", "k2") and settings.warmup_sizes == ("64x64",)
    assert settings.allowed_hosts == ("img.example.com",) and settings.trusted_proxies == ("10.0.0.1",)
    assert settings.allowed_private_networks == ("10.1.0.0/16",)
    assert not settings.allow_download and not settings.warmup and not settings.safety_checker
    assert settings.safety_check_openai and settings.demo and settings.compile is True
    assert settings.dtype == "float16" and settings.port == 9000 and settings.data_dir == tmp_path
    assert settings.webhook_timeout_s == 2.5 and settings.max_image_bytes == 1024
    assert settings.stats_window_seconds == 60.0
    assert settings_of("--no-compile").compile is False and settings_of().compile is None


@pytest.mark.parametrize(
    "flags,flag",
    [
        (["--job-lease-s", "0"], "--job-lease-s"),
        (["--max-attempts", "0"], "--max-attempts"),
        (["--inline-result-ttl-s", "-1"], "--inline-result-ttl-s"),
        (["--max-image-bytes", "0"], "--max-image-bytes"),
        (["--webhook-timeout-s", "0"], "--webhook-timeout-s"),
        (["--api-key", " padded "], "--api-key"),
    ],
)
def test_a_bad_setting_is_one_line_naming_its_flag(flags, flag, tmp_path, capsys):
    code, _, err = run(["serve", "--demo", "--data-dir", str(tmp_path), *flags], capsys)
    assert code == 2 and err.startswith(f"error: {flag}: ") and err.count("\n") == 1, err


def test_a_mistyped_flag_value_is_refused_by_the_parser(capsys):
    code, _, err = run(["serve", "--max-attempts", "three"], capsys)
    assert code == 2 and "--max-attempts" in err and "invalid int value" in err

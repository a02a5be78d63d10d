"""The installed `kleinserve` command as a real process: a clean one-line failure, and progress on a
terminal."""

import os
import pty
import subprocess
import sys

import pytest

from kleinserve.models import Variant


@pytest.fixture
def model(checkpoints):
    return str(checkpoints[Variant.DISTILLED])


def test_the_installed_command_fails_cleanly_in_a_real_process(model, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kleinserve",
            "generate",
            "x",
            "--model",
            model,
            "--image",
            str(broken),
            "-o",
            str(tmp_path / "o.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --image: {broken} is a broken image (Truncated File Read)"
    ]


def test_progress_is_shown_on_a_terminal(model, tmp_path):
    leader, follower = pty.openpty()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kleinserve",
            "generate",
            "tty",
            "--model",
            model,
            "--size",
            "64x64",
            "--steps",
            "5",
            "-o",
            str(tmp_path / "t.png"),
        ],
        stdout=subprocess.PIPE,
        stderr=follower,
        timeout=120,
    )
    os.close(follower)
    shown = os.read(leader, 65536).decode()
    os.close(leader)
    assert result.returncode == 0
    assert "step 1/5" in shown and "step 5/5" in shown

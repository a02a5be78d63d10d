"""`kleinserve generate` on the tiny model: real files out; every bad input is one clear line and a non-zero
exit."""

import numpy as np
import pytest
from PIL import Image

from kleinserve.models import Variant

from support.command_line import run
from support.images import random_image


@pytest.fixture
def model(checkpoints):
    return str(checkpoints[Variant.DISTILLED])


def test_generate_writes_the_image_and_reports_seed_and_timings(model, tmp_path, capsys):
    out_file = tmp_path / "fox.png"
    code, out, err = run(
        ["generate", "a fox", "--model", model, "--size", "96x64", "--seed", "42", "-o", str(out_file)],
        capsys,
    )
    assert code == 0, err
    assert Image.open(out_file).size == (96, 64) and Image.open(out_file).format == "PNG"
    assert "seed: 42" in out
    for stage in ("text", "references", "denoise", "decode", "encode"):
        assert f"{stage} " in out.split("timings:")[1]


def test_n_images_get_numbered_files_with_distinct_pictures(model, tmp_path, capsys):
    code, out, _ = run(
        [
            "generate",
            "two",
            "--model",
            model,
            "--size",
            "64x64",
            "--n",
            "2",
            "--seed",
            "1",
            "--output-format",
            "webp",
            "-o",
            str(tmp_path / "pair"),
        ],
        capsys,
    )
    assert code == 0
    first, second = (tmp_path / "pair-0.webp"), (tmp_path / "pair-1.webp")
    assert Image.open(first).format == "WEBP" and Image.open(second).format == "WEBP"
    assert not np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))
    assert "image i uses 1 + i" in out


def test_edit_with_reference_files_takes_the_first_ones_size(model, tmp_path, capsys):
    paths = []
    for index, size in enumerate([(100, 80), (64, 128)]):
        paths += ["--image", str(tmp_path / f"ref{index}.png")]
        random_image(*size, seed=index).save(paths[-1])
    code, _, err = run(["generate", "edit", "--model", model, *paths, "-o", str(tmp_path / "e.jpg")], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "e.jpg").size == (96, 80) and Image.open(tmp_path / "e.jpg").format == "JPEG"


def _bad_inputs(tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    truncated = tmp_path / "cut.png"
    random_image(128, 128).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    small = tmp_path / "small.png"
    random_image(64, 64).save(small)
    return [
        (["--model", "flux-3-giant"], "known models: flux.2-klein-4b"),
        (["--size", "100x96"], "not a multiple of 16; use 96 or 112"),
        (["--size", "4096x64"], "from 64 to 2048"),
        (["--size", "big"], "WIDTHxHEIGHT"),
        (["--image", str(text_file)], f"{text_file} is not an image"),
        (["--image", str(truncated)], f"{truncated} is a broken image"),
        (["--image", str(tmp_path / "missing.png")], f"cannot read {tmp_path / 'missing.png'}"),
        (["--image", str(small)] * 5, "at most 4"),
        (["--n", "0"], "num_images: must be from 1 to 4"),
        (["--steps", "2"], "steps: must be from 4 to 8"),
        (["--steps", "two"], "invalid int value"),
        (["--guidance", "3"], "step-distilled"),
        (["--output-format", "gif"], "invalid choice"),
        (["--output-format", "png", "-o", str(tmp_path / "x.jpg")], "does not match the extension"),
        (["-o", str(tmp_path)], "is a directory"),
    ]


def test_every_bad_input_is_one_clear_line(model, tmp_path, capsys):
    for extra, message in _bad_inputs(tmp_path):
        code, _, err = run(
            ["generate", "a fox", "--model", model, "-o", str(tmp_path / "out.png"), *extra], capsys
        )
        assert code != 0, extra
        assert err.count("\n") == 1 and err.startswith("error: "), (extra, err)
        assert message in err, (extra, err)

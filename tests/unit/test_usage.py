"""Usage without a server: a job's engine seconds are its share, by images, of its batch; bad flags stop
the start naming the flag."""

import pytest

from kleinserve.cli import main
from kleinserve.request import GenerationResult

MODEL = "flux.2-klein-4b"


@pytest.mark.parametrize(
    ("flags", "flag", "says"),
    [
        (["--price", "nonsense"], "--price", "MODEL=USD/image"),
        (["--price", "flux.2-klein-5b=0.01"], "--price", "unknown model"),
        (["--price", f"{MODEL}=-1"], "--price", "0 or more"),
        (["--price", f"{MODEL}=0.01/pixel"], "--price", "mp or image"),
        (["--price", f"{MODEL}=0.01", "--price", "flux-2-klein-4b=1/image"], "--price", "priced twice"),
        (["--admin-key", " padded "], "--admin-key", "whitespace"),
        (["--api-key", "same", "--admin-key", "same"], "--admin-key", "differ"),
    ],
)
def test_bad_flags_stop_the_start_naming_the_flag(flags, flag, says, tmp_path, capsys):
    code = main(["serve", "--demo", "--data-dir", str(tmp_path), *flags])
    error = capsys.readouterr().err
    assert code == 2 and error.startswith(f"error: {flag}:") and says in error, error


def test_a_jobs_engine_seconds_are_its_share_by_images_of_its_batch():
    timings = {"text": 1.0, "references": 0.0, "denoise": 2.5, "decode": 0.5, "encode": 9.0}  # no encode
    shared = GenerationResult([object()] * 2, 0, 64, 64, timings, batch_images=8)
    alone = GenerationResult([object()] * 2, 0, 64, 64, timings)
    assert shared.engine_seconds == pytest.approx(1.0) and alone.engine_seconds == pytest.approx(4.0)

"""OpenAI's image stream (api/openai/stream.py): which steps give partial images, the event framing, and
the `error` event a job that fails after the stream started ends with."""

import asyncio
import json

import numpy as np
import pytest

from kleinserve.api.openai.stream import Shape, events, partial_steps
from kleinserve.errors import GenerationFailed

SHAPE = Shape("image_generation", "auto", "png", None, 64, 48)


@pytest.mark.parametrize(
    "count, total, steps",
    [(0, 4, []), (1, 4, [2]), (2, 4, [1, 3]), (3, 4, [1, 2, 3]), (2, 8, [3, 5]), (3, 8, [2, 4, 6]),
     (3, 2, [1]), (3, 1, []), (3, 5, [1, 2, 4])],
)  # fmt: skip
def test_partial_steps_are_distinct_spread_and_before_the_last(count, total, steps):
    assert partial_steps(count, total) == steps


def parsed(frames: list[str]) -> list[tuple[str, dict]]:
    out = []
    for frame in frames:
        event, data = frame.rstrip("\n").split("\n")
        out.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


async def collect(partials: int, reported: list, error: Exception) -> list[str]:
    steps: asyncio.Queue = asyncio.Queue()
    for step in reported:
        steps.put_nowait(step)
    outcome = asyncio.get_running_loop().create_future()
    outcome.set_exception(error)
    return [frame async for frame in events(SHAPE, partials, steps, outcome)]


def test_partials_then_an_error_event_when_the_job_fails():
    preview = np.zeros((6, 8, 3), np.uint8)
    reported = [(step, 4, [preview]) for step in range(1, 5)]
    frames = asyncio.run(collect(2, reported, GenerationFailed("the engine ran out of memory")))
    [(first, one), (second, two), (last, error)] = parsed(frames)
    assert first == second == one["type"] == "image_generation.partial_image"
    assert (one["partial_image_index"], two["partial_image_index"]) == (0, 1)
    assert one["size"] == "64x48" and one["background"] == "opaque" and one["b64_json"]
    assert last == error["type"] == "error"
    assert error["error"]["code"] == "generation_failed" and "out of memory" in error["error"]["message"]

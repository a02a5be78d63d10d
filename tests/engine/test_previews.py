"""Step previews in the engine: reported for each image, and only when asked."""

import numpy as np

from kleinserve.request import build_request


def test_the_engine_reports_previews_of_each_image_only_when_asked(engine):
    requests = [
        build_request(engine.spec, prompt="a", width=128, height=96, seed=1, num_images=2),
        build_request(engine.spec, prompt="b", width=128, height=96, seed=2),
    ]
    seen = []

    def on_step(progress):
        pictures = progress.previews() if progress.step in (1, progress.total_steps) else None
        seen.append((progress.step, pictures))

    with_previews = engine.generate(requests, on_step=on_step)
    assert [step for step, _ in seen] == [1, 2, 3, 4]
    first, last = seen[0][1], seen[-1][1]
    assert len(last) == 3 and all(p.shape == (12, 16, 3) and p.dtype == np.uint8 for p in last)
    assert not np.array_equal(first[0], last[0])  # the estimate moves as the noise is removed
    without = engine.generate(requests)
    for a, b in zip(with_previews, without, strict=True):  # watching changes nothing
        assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images, strict=True))

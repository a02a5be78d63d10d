"""Which requests may share a batch: the one place that decides it.

Requests with equal batch keys (same size, steps, guidance under CFG, reference layout) run as one
denoising batch; a batch holds at most `max_images` images. The job store claims batches by key, and
the engine, given requests directly, plans its batches with the same rule.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from kleinserve.models import ModelSpec
from kleinserve.request import GenerationRequest, reference_image_size


def batch_key(spec: ModelSpec, request: GenerationRequest) -> str:
    guidance = f"{request.guidance:g}" if spec.uses_cfg else "-"
    layout = ",".join(f"{w}x{h}" for w, h in (reference_image_size(*image.size) for image in request.images))
    return f"{request.width}x{request.height}/{request.steps}/{guidance}/[{layout}]"


def plan_batches(
    spec: ModelSpec, requests: Sequence[GenerationRequest], max_images: int
) -> Iterator[list[int]]:
    """Indices of `requests` grouped into batches: by key, in order, each within `max_images`."""
    groups: dict[str, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(batch_key(spec, request), []).append(index)
    for indices in groups.values():
        chunk, images = [], 0
        for index in indices:
            if chunk and images + requests[index].num_images > max_images:
                yield chunk
                chunk, images = [], 0
            chunk.append(index)
            images += requests[index].num_images
        yield chunk

"""Schemathesis hooks for tests/test_openapi_fuzz.py: keep each generated image cheap on a CPU (sides up
to 256 px, 256x256 where the size is left out, one image, at most 4 steps) so a run takes minutes; every
other field is fuzzed as the schema allows. Loaded through SCHEMATHESIS_HOOKS."""

import schemathesis

MAX_SIDE = 256


def _side(value):
    if isinstance(value, int) and not isinstance(value, bool):
        return min(value, MAX_SIDE)
    if isinstance(value, str) and value.isdigit():
        return str(min(int(value), MAX_SIDE))
    return value


@schemathesis.hook
def map_body(ctx, body):
    if not isinstance(body, dict):
        return body
    if isinstance(body.get("image_size"), dict):
        body["image_size"] = {key: _side(value) for key, value in body["image_size"].items()}
    if isinstance(body.get("size"), str) and body["size"].count("x") == 1:
        body["size"] = "x".join(str(_side(side)) for side in body["size"].split("x"))
    if "prompt" in body and "size" not in body and "image_size" not in body:
        body["size" if ctx.operation.path.startswith("/v1/") else "image_size"] = (
            "256x256" if ctx.operation.path.startswith("/v1/") else "square"  # 512x512, fal's smallest preset
        )
    for name in ("n", "num_images"):
        if isinstance(body.get(name), int):
            body[name] = 1
    if isinstance(body.get("num_inference_steps"), int):
        body["num_inference_steps"] = min(body["num_inference_steps"], 4)
    return body

"""Schemathesis hooks for tests/live/test_openapi_fuzz.py: keep each generated image cheap on a CPU (sides
up to 64 px, 64x64 where the size is left out, one image, at most 4 steps) so a run takes minutes. Only
values the schema accepts are made cheaper, so a value out of range still reaches the server as generated
and must be refused. Applied in before_call, which runs for every phase (map_body does not reach the
coverage phase, whose cases then rendered 1024x1024 images, n=4 and 8 steps). Loaded through
SCHEMATHESIS_HOOKS."""

import schemathesis

MAX_SIDE = 64
MOST_STEPS = 4
# What the schema accepts for the 4B distilled model served (only these are made cheaper)
SIDES, IMAGES, STEPS = range(64, 2048 + 1, 16), range(1, 4 + 1), range(4, 8 + 1)
FAL_PATHS = {"path": "flux-2/klein/4b", "endpoint": "fal-ai/flux-2/klein/4b", "app": "fal-ai/flux-2"}
BFL_PATHS = "/v1/flux-2-klein-"  # BFL submits: width/height/steps, sizes as the schema's
GATEWAY_PATH, GATEWAY_MODEL = "/v1/ai/image-model", "bfl/flux-2-klein-4b"  # the model is a header there
REPLICATE_MODEL = {"owner": "black-forest-labs", "name": "flux-2-klein-4b"}  # a model served: jobs run


def _cheaper(value, accepted: range, cheapest: int):
    if isinstance(value, int) and not isinstance(value, bool) and value in accepted and value > cheapest:
        return cheapest
    return value


def _side(value):
    if isinstance(value, str) and value.isdigit():
        return str(_cheaper(int(value), SIDES, MAX_SIDE))
    return _cheaper(value, SIDES, MAX_SIDE)


def _bounded(body: dict, openai_route: bool) -> None:
    if isinstance(body.get("image_size"), dict):
        body["image_size"] = {key: _side(value) for key, value in body["image_size"].items()}
    if body.get("size") == "auto":  # the model's default size, 1024x1024
        body["size"] = f"{MAX_SIDE}x{MAX_SIDE}"
    if isinstance(body.get("size"), str) and body["size"].count("x") == 1:
        body["size"] = "x".join(str(_side(side)) for side in body["size"].split("x"))
    if "prompt" in body and body.get("size") is None and body.get("image_size") is None:
        body["size" if openai_route else "image_size"] = (
            f"{MAX_SIDE}x{MAX_SIDE}" if openai_route else {"width": MAX_SIDE, "height": MAX_SIDE}
        )
    for name in ("n", "num_images"):
        if name in body:
            body[name] = _cheaper(body[name], IMAGES, 1)
    if "num_inference_steps" in body:
        body["num_inference_steps"] = _cheaper(body["num_inference_steps"], STEPS, MOST_STEPS)


def _bounded_replicate(body: dict) -> None:
    """Replicate's predictions are detached jobs too (1 MP by default): a size of at most MAX_SIDE a side,
    one image, at most 4 steps."""
    given = body.get("input")
    if not isinstance(given, dict):
        return
    if given.get("size") is None:
        given["size"] = f"{MAX_SIDE}x{MAX_SIDE}"
    elif isinstance(given["size"], str) and given["size"].count("x") == 1:
        given["size"] = "x".join(_side(side) for side in given["size"].split("x"))
    if "num_outputs" in given:
        given["num_outputs"] = _cheaper(given["num_outputs"], IMAGES, 1)
    if "num_inference_steps" in given:
        given["num_inference_steps"] = _cheaper(given["num_inference_steps"], STEPS, MOST_STEPS)


def _bounded_bfl(body: dict) -> None:
    """BFL's submits are detached jobs that run to the end whoever waits: left at ~1 MP they queued up
    until a synchronous request of the same run timed out."""
    for name in ("width", "height"):
        body[name] = MAX_SIDE if body.get(name) is None else _side(body[name])
    if "steps" in body:
        body["steps"] = _cheaper(body["steps"], STEPS, MOST_STEPS)


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    for name, value in FAL_PATHS.items():  # a generated path names no fal endpoint: every call was a 404
        if name in (case.path_parameters or {}):
            case.path_parameters[name] = value
    if case.operation.path == GATEWAY_PATH:  # a generated ai-model-id names no model: every call was a 404
        case.headers = {**(case.headers or {}), "ai-model-id": GATEWAY_MODEL}
    if case.operation.path == "/v1/models/{owner}/{name}/predictions":  # else nearly every call was a 404
        case.path_parameters = {**(case.path_parameters or {}), **REPLICATE_MODEL}
    if isinstance(case.body, dict) and case.operation.path.startswith(("/v1/models/", "/v1/predictions")):
        _bounded_replicate(case.body)
    elif isinstance(case.body, dict) and case.operation.path.startswith(BFL_PATHS):
        _bounded_bfl(case.body)
    elif isinstance(case.body, dict):
        _bounded(case.body, openai_route=case.operation.path.startswith("/v1/"))

"""Property-based checks (hypothesis): whatever a client sends, validation and image decoding give a valid
result or an error that names the field (InvalidRequest, a 4xx at the API), never another exception."""

import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from kleinserve.errors import InvalidRequest
from kleinserve.imaging import decode_image
from kleinserve.models import resolve_model
from kleinserve.request import GenerationRequest, build_request, parse_size

SPECS = [resolve_model("flux.2-klein-4b"), resolve_model("flux.2-klein-base-4b")]
FIELDS = ("prompt", "width", "height", "steps", "guidance", "seed", "num_images", "negative_prompt")

# What JSON can carry, plus what a careless client sends: lone surrogates, NULs, huge and odd numbers.
surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
texts = st.text() | st.builds(lambda a, b, c: a + b + c, st.text(max_size=5), surrogates, st.text(max_size=5))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
plausible = {
    "prompt": texts | json_values,
    "width": st.integers(0, 4096) | json_values,
    "height": st.integers(0, 4096) | json_values,
    "steps": st.integers(-2, 120) | json_values,
    "guidance": st.floats(allow_nan=True) | json_values,
    "seed": st.integers(-(2**70), 2**70) | json_values,
    "num_images": st.integers(-1, 9) | json_values,
    "negative_prompt": texts | json_values,
}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=st.sampled_from(SPECS),
    fields=st.fixed_dictionaries(  # dialects always pass the prompt, None when it was left out
        {"prompt": plausible["prompt"]}, optional={k: v for k, v in plausible.items() if k != "prompt"}
    ),
)
def test_build_request_gives_a_request_or_names_the_field(spec, fields):
    try:
        request = build_request(spec, **fields)
    except InvalidRequest as exc:
        assert exc.field in FIELDS and exc.reason
        return
    assert isinstance(request, GenerationRequest)
    json.dumps({"prompt": request.prompt, "negative": request.negative_prompt})  # storable as JSON
    request.prompt.encode("utf-8")
    assert request.width % 16 == 0 and 64 <= request.width <= 2048 and 1 <= request.num_images <= 4


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=20) | json_values)
def test_parse_size_gives_a_size_or_names_the_field(text):
    try:
        width, height = parse_size(text, "size")
    except InvalidRequest as exc:
        assert exc.field == "size"
        return
    assert isinstance(width, int) and isinstance(height, int)


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (80, 72), (200, 30, 90)).save(buffer, fmt)
    return buffer.getvalue()


VALID = [_encoded(fmt) for fmt in ("PNG", "JPEG", "WEBP", "GIF", "BMP")]


@st.composite
def damaged_images(draw) -> bytes:
    """A real image file with bytes flipped, cut short or spliced: what decoders choke on."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 8))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    cut = draw(st.integers(1, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=16))


@pytest.mark.parametrize("field", ["image", "image_urls[0]"])
@settings(max_examples=300, deadline=None)
@given(data=damaged_images() | st.binary(max_size=256))
def test_decode_image_gives_an_image_or_names_the_field(field, data):
    try:
        image = decode_image(data, "upload", field)
    except InvalidRequest as exc:
        assert exc.field == field
        return
    assert image.width * image.height <= 1024 * 1024 and image.width > 0

"""The AI Gateway dialect's own rules, without a server: aspectRatio -> a multiple-of-16 size of about
1 MP, the provider's files -> URLs the reference fetcher takes, the model ids as the gateway names them."""

import json

import pytest

from kleinserve.api.errors import ApiError
from kleinserve.api.gateway.routes import gateway_id
from kleinserve.api.gateway.schemas import file_reference, model_options, ratio_sides
from kleinserve.models import registered_model
from kleinserve.service.served_models import ServedModel


@pytest.mark.parametrize(
    ("ratio", "size"),
    [
        ("1:1", (1024, 1024)),
        ("16:9", (1360, 768)),
        ("9:16", (768, 1360)),
        ("4:3", (1184, 880)),
        ("8:1", (2048, 256)),
        ("1:8", (256, 2048)),
    ],
)
def test_an_aspect_ratio_is_about_a_megapixel_in_multiples_of_16(ratio, size):
    assert ratio_sides(ratio) == size
    assert all(side % 16 == 0 for side in size)


@pytest.mark.parametrize("ratio", ["16x9", "0:1", "1:0", "9:1", "a:b", "1.5:1", 3, ""])
def test_a_wrong_aspect_ratio_is_a_400_naming_it(ratio):
    with pytest.raises(ApiError) as raised:
        ratio_sides(ratio)
    assert raised.value.status == 400 and raised.value.param == "aspectRatio"


def test_files_become_data_urls_or_stay_urls():
    assert file_reference({"type": "file", "mediaType": "image/jpeg", "data": "AAAA"}, "files[0]") == (
        "data:image/jpeg;base64,AAAA"
    )
    assert file_reference({"type": "url", "url": "https://example.com/a.png"}, "files[1]") == (
        "https://example.com/a.png"
    )
    for wrong, field in [({"type": "blob"}, "files[0]"), ({"type": "file", "data": b"x"}, "files[0].data"),
                         ({"type": "file", "mediaType": "text/plain", "data": "AA"}, "files[0].mediaType"),
                         ({"type": "url"}, "files[0].url")]:  # fmt: skip
        with pytest.raises(ApiError) as raised:
            file_reference(wrong, "files[0]")
        assert raised.value.param == field


def test_the_models_options_come_from_bfl_or_black_forest_labs_only():
    assert model_options({"bfl": {"steps": 4}, "openai": {"quality": "hd"}}) == ("bfl", {"steps": 4})
    assert model_options({"blackForestLabs": {"guidance": 2}}) == ("blackForestLabs", {"guidance": 2})
    assert model_options(None) == ("bfl", {})


@pytest.mark.parametrize("model", ["flux.2-klein-4b", "flux.2-klein-9b-kv", "flux.2-klein-base-9b"])
def test_a_served_model_is_named_as_the_gateway_names_it(model):
    spec = registered_model(model)
    name = gateway_id(ServedModel(spec=spec))
    assert name == "bfl/" + model.replace("flux.2-", "flux-2-")
    assert registered_model(name) is spec


def test_gateway_errors_carry_the_types_the_gateway_client_maps_to_its_classes():
    limited = json.loads(ApiError(429, "slow down", retry_after=3).response("/v1/ai/image-model").body)
    assert limited["error"]["type"] == "rate_limit_exceeded"  # @ai-sdk/gateway: GatewayRateLimitError
    failed = json.loads(ApiError(500, "boom").response("/v1/ai/image-model").body)
    assert failed["error"]["type"] == "internal_server_error"
    elsewhere = json.loads(ApiError(429, "slow down").response("/v1/images/generations").body)
    assert elsewhere["error"]["type"] == "rate_limit_error"  # OpenAI's own name stays on OpenAI's routes

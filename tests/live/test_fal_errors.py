"""Bad input through the fal dialect: fal-shaped errors (422 with `detail` naming the field, or
`{"detail", "error_type"}`), raised by the unmodified fal-client, and other jobs unaffected."""

import base64
import concurrent.futures

import httpx
import pytest

ENDPOINT = "fal-ai/flux-2/klein/4b"
SMALL = {"width": 64, "height": 64}


def error_of(fal, endpoint: str, arguments: dict):
    with pytest.raises(fal.FalClientHTTPError) as caught:
        fal.run(endpoint, arguments=arguments)
    return caught.value


def field_error(fal, endpoint: str, arguments: dict) -> tuple[list, str]:
    error = error_of(fal, endpoint, arguments)
    assert error.status_code == 422 and error.error_type == "validation_error", error
    assert error.response.headers["x-fal-error-type"] == "validation_error"
    (detail,) = error.response.json()["detail"]
    return detail["loc"], detail["msg"]


FIRST = ["body", "image_urls", 0]


def urls(*image_urls: str) -> dict:
    return {"prompt": "x", "image_urls": list(image_urls)}


def test_field_errors_name_the_field(fal, image_host):
    edit = ENDPOINT + "/edit"
    url = image_host.url
    cases = [
        (ENDPOINT, {"image_size": SMALL}, ["body", "prompt"], "required"),
        (ENDPOINT, {"prompt": "x", "num_images": 9}, ["body", "num_images"], "from 1 to 4"),
        (ENDPOINT, {"prompt": "x", "image_size": "huge"}, ["body", "image_size"], "square_hd"),
        (ENDPOINT, {"prompt": "x", "image_size": {"width": 100, "height": 64}}, ["body", "image_size"], "96"),
        (ENDPOINT, {"prompt": "x", "num_inference_steps": 50}, ["body", "num_inference_steps"], "4 to 8"),
        (ENDPOINT, {"prompt": "x", "output_format": "gif"}, ["body", "output_format"], "jpeg, png, webp"),
        (ENDPOINT, {"prompt": "x", "sync_mode": "yes"}, ["body", "sync_mode"], "true or false"),
        (ENDPOINT, {"prompt": "x", "seed": "7"}, ["body", "seed"], "integer"),
        (ENDPOINT, {"prompt": "x", "image_urls": [f"{url}/a.png"]}, ["body", "image_urls"], "/edit"),
        (edit, {"prompt": "x"}, ["body", "image_urls"], "required"),
        (edit, {"prompt": "x", "image_urls": [f"{url}/a.png"] * 5}, ["body", "image_urls"], "1 to 4"),
        (edit, {"prompt": "x", "image_urls": []}, ["body", "image_urls"], "1 to 4"),
        (edit, urls(f"{url}/missing.png"), FIRST, "HTTP 404"),
        (edit, urls(f"{url}/a.png", "http://192.168.1.20/a.png"), ["body", "image_urls", 1], "private"),
        (edit, urls("http://169.254.169.254/latest/meta-data"), FIRST, "link-local"),
        (edit, urls(f"{url}/redirect-private"), FIRST, "10.1.2.3"),
        (edit, urls(f"{url}/page.html"), FIRST, "not an image"),
        (edit, urls(f"{url}/huge.png"), FIRST, "MiB"),
        (edit, urls(f"{url}/slow.png"), FIRST, "within 1.5 s"),
        (edit, urls("ftp://example.com/a.png"), FIRST, "http"),
        (edit, urls("data:text/plain;base64,aGVsbG8="), FIRST, "not an image"),
        (edit, urls("data:image/png;base64," + base64.b64encode(b"nope").decode()), FIRST, "known format"),
        (edit, urls("data:image/png;base64,@@@"), FIRST, "base64"),
        (edit, {"prompt": "x", "image_url": 5}, ["body", "image_url"], "one image URL"),
        (edit, {"prompt": "x", "image_url": f"{url}/a.png", "image_urls": [f"{url}/a.png"]},
         ["body", "image_url"], "not both"),
        (edit, {"prompt": "x", "image_url": f"{url}/missing.png"}, ["body", "image_url"], "HTTP 404"),
        (edit, {"prompt": "x", "image_url": "data:image/png;base64,@@@"}, ["body", "image_url"], "base64"),
        (ENDPOINT, {"prompt": "x", "image_url": f"{url}/a.png"}, ["body", "image_url"], "/edit"),
    ]  # fmt: skip
    for endpoint, arguments, loc, words in cases:
        got_loc, message = field_error(fal, endpoint, arguments)
        assert got_loc == loc and words in message, (arguments, got_loc, message)
        assert not message.startswith(f"{loc[1]}:"), f"msg repeats the field that loc names: {message}"


def test_routing_errors(fal, fal_server):
    unserved = error_of(fal, "fal-ai/flux-2/klein/9b", {"prompt": "x"})
    assert unserved.status_code == 404 and "flux.2-klein-9b" in str(unserved)
    assert "fal-ai/flux-2/klein/4b" in str(unserved)
    with pytest.raises(fal.FalClientHTTPError) as unknown:
        fal.status(ENDPOINT, "no-such-request")
    assert unknown.value.status_code == 404 and unknown.value.error_type == "request_not_found"
    with pytest.raises(fal.FalClientHTTPError) as cancel_unknown:
        fal.cancel(ENDPOINT, "no-such-request")
    assert cancel_unknown.value.status_code == 404
    broken = httpx.post(f"{fal_server.url}/{ENDPOINT}", content=b"{not json", verify=fal_server.ssl_context())
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["detail"]


def test_a_private_webhook_is_refused_at_submit(fal):
    with pytest.raises(fal.FalClientHTTPError) as refused:
        fal.submit(
            ENDPOINT, arguments={"prompt": "x", "image_size": SMALL}, webhook_url="http://10.0.0.5/hook"
        )
    assert refused.value.status_code == 422 and "fal_webhook" in str(refused.value)


def test_bad_requests_do_not_disturb_good_ones(fal, image_host):
    good = {"prompt": "good", "image_size": SMALL}
    bad = [{"prompt": "x", "num_images": 9}, {"image_size": SMALL}, {"prompt": "x", "image_size": "huge"}]
    edit_bad = {"prompt": "x", "image_urls": [f"{image_host.url}/missing.png"]}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        goods = [pool.submit(fal.run, ENDPOINT, arguments=good) for _ in range(3)]
        bads = [pool.submit(fal.run, ENDPOINT, arguments=b) for b in bad]
        bads.append(pool.submit(fal.run, ENDPOINT + "/edit", arguments=edit_bad))
        assert all(future.result()["images"] for future in goods)
        assert all(isinstance(future.exception(), fal.FalClientHTTPError) for future in bads)


def test_null_or_empty_reference_fields_on_text_to_image_send_none(fal):
    """`"image_url": null` is no image (it once reached a strict zip of no URLs with one name: a 500)."""
    for empty in ({"image_url": None}, {"image_url": None, "image_urls": []}, {"image_urls": None}):
        result = fal.run(ENDPOINT, arguments={"prompt": "x", "image_size": SMALL, **empty})
        assert len(result["images"]) == 1, empty

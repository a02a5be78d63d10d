"""The S3 image store (`--store s3://BUCKET/PREFIX`) against a real S3 protocol server: moto's server mode,
started here on 127.0.0.1. The store alone (put, URLs, redirects, deletes), then real servers writing to it
through the OpenAI and fal dialects."""

import io
import json
import os
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from kleinserve.errors import StoreUnavailable
from kleinserve.storage.s3 import open_s3_store
from kleinserve.storage.store import image_key, new_folder

from support.live_server import LiveServer
from support.s3_server import bucket, s3, s3_endpoint, s3_env  # noqa: F401 (fixtures)
from support.zygote import run_kleinserve

FAL = "fal-ai/flux-2/klein/4b"


@pytest.fixture
def aws_env(monkeypatch, s3_env):
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)


def make_public(s3, bucket: str) -> None:
    """Anyone may GET the bucket's objects (moto, like S3, refuses unsigned requests otherwise)."""
    statement = {
        "Effect": "Allow",
        "Principal": "*",
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/*",
    }
    s3.put_bucket_policy(
        Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    )


def object_keys(s3, bucket: str) -> list[str]:
    return sorted(item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def png(width: int = 8, height: int = 4) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_put_then_the_url_returns_the_bytes_with_their_content_type(aws_env, s3, bucket):
    store = open_s3_store(f"s3://{bucket}/out/", 900, None)
    folder = new_folder()
    key = image_key(folder, 0, "png")
    data = png()
    store.put(key, data)
    assert object_keys(s3, bucket) == [f"out/{key}"]
    url = store.url(key, "http://ignored.example")
    split = urlsplit(url)
    assert f"{split.scheme}://{split.netloc}" == s3.meta.endpoint_url
    assert split.path == f"/{bucket}/out/{key}"
    assert parse_qs(split.query)["X-Amz-Expires"] == ["900"] and "X-Amz-Signature" in parse_qs(split.query)
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and fetched.content == data
    assert fetched.headers["content-type"] == "image/png"
    assert "immutable" in fetched.headers["cache-control"]
    assert httpx.get(url.split("?")[0]).status_code == 403  # the bucket is private: unsigned is refused
    assert store.local_file(key) is None and store.remove_partial_files() == 0


def test_redirects_go_to_existing_objects_only(aws_env, bucket):
    store = open_s3_store(f"s3://{bucket}", 60, None)
    key = image_key(new_folder(), 1, "webp")
    store.put(key, b"RIFF-not-really-webp")
    assert httpx.get(store.redirect_url(key)).content == b"RIFF-not-really-webp"
    assert store.read(key) == b"RIFF-not-really-webp"  # uploads (/v1/files) are read back like this
    assert store.redirect_url(image_key(new_folder(), 0, "png")) is None  # well formed, never stored
    assert store.read(image_key(new_folder(), 0, "png")) is None
    assert store.redirect_url("../../etc/passwd") is None  # not a storage key: S3 is not even asked


def test_a_public_url_gives_plain_urls_under_it(aws_env, s3, s3_endpoint, bucket):
    make_public(s3, bucket)
    public = f"{s3_endpoint}/{bucket}/"
    store = open_s3_store(f"s3://{bucket}/imgs", 60, public)
    key = image_key(new_folder(), 0, "jpeg")
    store.put(key, b"jpeg bytes")
    assert store.url(key, "") == f"{s3_endpoint}/{bucket}/imgs/{key}"
    answer = httpx.get(store.url(key, ""))
    assert answer.content == b"jpeg bytes" and answer.headers["content-type"] == "image/jpeg"


def test_delete_folder_removes_that_folder_only(aws_env, s3, bucket):
    store = open_s3_store(f"s3://{bucket}/p", 60, None)
    doomed, kept = new_folder(), new_folder()
    for index in range(3):
        store.put(image_key(doomed, index, "png"), png())
    store.put(image_key(kept, 0, "png"), png())
    s3.put_object(Bucket=bucket, Key=f"p/{doomed}-lookalike/0.png", Body=b"x")  # shares the prefix only
    store.delete_folder(doomed)
    assert object_keys(s3, bucket) == sorted([f"p/{kept}/0.png", f"p/{doomed}-lookalike/0.png"])
    store.delete_folder("../p")  # not a folder name: nothing happens
    assert len(object_keys(s3, bucket)) == 2


def test_an_unreachable_bucket_is_named_with_its_endpoint(aws_env, s3_endpoint):
    with pytest.raises(StoreUnavailable) as missing:
        open_s3_store("s3://no-such-bucket-here/x", 60, None)
    message = str(missing.value)
    assert "no-such-bucket-here" in message and s3_endpoint in message and "does not exist" in message


# Real servers writing to the bucket -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_server(s3, s3_env, tmp_path_factory):
    """One demo server whose images go to an S3 bucket, under a prefix."""
    name = f"served-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    data_dir = tmp_path_factory.mktemp("s3-server")
    server = LiveServer(
        data_dir, "--demo", "--no-warmup", "--store", f"s3://{name}/gen", "--presign-expiry-s", "600",
        env=s3_env,
    )
    with server:
        server.bucket = name
        yield server


def fetch_image(url: str, content_type: str = "image/png") -> Image.Image:
    answer = httpx.get(url, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == content_type
    return Image.open(io.BytesIO(answer.content))


def assert_presigned(url: str, server: LiveServer, s3_endpoint: str) -> str:
    """The storage key of a presigned URL to an object under the server's bucket and prefix."""
    split = urlsplit(url)
    assert url.startswith(f"{s3_endpoint}/{server.bucket}/gen/"), url
    assert parse_qs(split.query)["X-Amz-Expires"] == ["600"]
    return split.path.split("/gen/", 1)[1]


def test_openai_urls_are_presigned_and_files_links_redirect_to_them(s3_server, s3, s3_endpoint):
    answer = httpx.post(
        f"{s3_server.url}/v1/images/generations",
        json={"prompt": "a fox", "size": "96x64", "n": 2, "response_format": "url"},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    urls = [item["url"] for item in answer.json()["data"]]
    keys = [assert_presigned(url, s3_server, s3_endpoint) for url in urls]
    assert [fetch_image(url).size for url in urls] == [(96, 64), (96, 64)]
    assert {f"gen/{key}" for key in keys} <= set(object_keys(s3, s3_server.bucket))
    assert not list((s3_server.data_dir / "files").rglob("*.png"))  # nothing written locally

    redirect = httpx.get(f"{s3_server.url}/files/{keys[0]}")
    assert redirect.status_code == 307 and redirect.headers["cache-control"] == "no-store"
    assert_presigned(redirect.headers["location"], s3_server, s3_endpoint)
    assert httpx.get(redirect.headers["location"]).content == httpx.get(urls[0]).content
    followed = httpx.get(f"{s3_server.url}/files/{keys[1]}", follow_redirects=True)
    assert followed.content == httpx.get(urls[1]).content
    for unknown in (image_key(new_folder(), 0, "png"), "not-a-folder/0.png"):
        missing = httpx.get(f"{s3_server.url}/files/{unknown}")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "file_not_found"


def test_fal_sync_and_queue_results_are_in_the_bucket(s3_server, s3_endpoint):
    sync = httpx.post(
        f"{s3_server.url}/{FAL}",
        json={"prompt": "a boat", "image_size": {"width": 64, "height": 128}, "output_format": "jpeg"},
        timeout=120,
    )
    assert sync.status_code == 200, sync.text
    (image,) = sync.json()["images"]
    assert_presigned(image["url"], s3_server, s3_endpoint)
    assert fetch_image(image["url"], "image/jpeg").size == (64, 128)

    queued = httpx.post(
        f"{s3_server.url}/queue/{FAL}", json={"prompt": "a hill", "image_size": {"width": 80, "height": 64}}
    )
    assert queued.status_code == 200, queued.text
    request_id = queued.json()["request_id"]
    deadline = time.monotonic() + 120
    while (
        httpx.get(f"{s3_server.url}/queue/{FAL}/requests/{request_id}/status").json()["status"] != "COMPLETED"
    ):
        assert time.monotonic() < deadline, "the queued job never completed"
        time.sleep(0.1)
    result = httpx.get(f"{s3_server.url}/queue/{FAL}/requests/{request_id}").json()
    (image,) = result["images"]
    assert_presigned(image["url"], s3_server, s3_endpoint)
    assert fetch_image(image["url"]).size == (80, 64)


def test_public_urls_and_retention_deletes_the_objects(s3, s3_env, s3_endpoint, tmp_path):
    name = f"public-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    make_public(s3, name)
    flags = ["--demo", "--no-warmup", "--store", f"s3://{name}/p",
             "--store-public-url", f"{s3_endpoint}/{name}", "--retention-hours", str(3 / 3600)]  # fmt: skip
    with LiveServer(tmp_path, *flags, env=s3_env) as server:
        answer = httpx.post(
            f"{server.url}/v1/images/generations", json={"prompt": "a fox", "size": "64x64"}, timeout=120
        )
        assert answer.status_code == 200, answer.text
        url = answer.json()["data"][0]["url"]
        key = url.split("/p/", 1)[1]
        assert url == f"{s3_endpoint}/{name}/p/{key}"  # plain: no signature
        assert fetch_image(url).size == (64, 64)
        assert httpx.get(f"{server.url}/files/{key}").headers["location"] == url
        deadline = time.monotonic() + 30
        while object_keys(s3, name) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert object_keys(s3, name) == []
        assert httpx.get(f"{server.url}/files/{key}").status_code == 404
        assert httpx.get(f"{server.url}/v1/jobs/{answer.json()['job_id']}").status_code == 404


def test_a_missing_bucket_stops_the_server_at_start_with_a_clear_message(s3_env, s3_endpoint, tmp_path):
    command = ["serve", "--demo", "--data-dir", str(tmp_path), "--store", "s3://never-created/x"]
    ran = run_kleinserve(command, env={**os.environ, **s3_env})
    assert ran.returncode == 1
    assert "never-created" in ran.output and s3_endpoint in ran.output and "does not exist" in ran.output

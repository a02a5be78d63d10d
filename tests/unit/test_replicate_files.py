"""Replicate's Files API without a server: uploads kept (a real SQLite job store and a local image store)
only when they are png, jpeg or webp images within the limits (else an error naming `content`), each
owner's own, read back and deleted with their bytes (also by retention); the File object as
replicate-python parses it; and which URLs are this server's own file URLs (read locally, never fetched)."""

import asyncio
import io
import time
from types import SimpleNamespace

import pytest
from PIL import Image

from kleinserve.api.replicate.files import _file, own_file_id
from kleinserve.api.replicate.schemas import ReplicateFile
from kleinserve.errors import InvalidRequest
from kleinserve.jobs.sqlite.store import SQLiteJobStore
from kleinserve.service.housekeeping import Housekeeping
from kleinserve.service.references import References, decoder_threads
from kleinserve.service.uploads import UploadedFiles, sniffed_format
from kleinserve.storage.store import LocalStore

FILE_ID = "0123456789abcdef0123456789abcdef"


def image_bytes(fmt: str, size=(16, 8), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 1).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def uploads(tmp_path):
    jobs = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    settings = SimpleNamespace(max_image_bytes=64 * 1024, retention_hours=1.0, public_base_url=None)
    references = References(outbound=None, decoder=decoder_threads())
    yield UploadedFiles(jobs, LocalStore(tmp_path / "files"), settings, references)
    references.decoder.shutdown()
    asyncio.run(jobs.close())


def test_an_image_is_kept_for_its_owner_only_and_deleted_with_its_bytes(uploads, tmp_path):
    data = image_bytes("WEBP")

    async def scenario():
        record = await uploads.create(data, "a.webp", {"k": "v"}, "key-1")
        image = await uploads.image(record.id, "key-1", "input.images[0]")
        seen = (await uploads.get(record.id, "key-1"), await uploads.get(record.id, "key-2"),
                await uploads.content(record), image)  # fmt: skip
        with pytest.raises(InvalidRequest) as others:
            await uploads.image(record.id, "key-2", "input.images[0]")
        deleted = await uploads.delete(record.id, "key-2"), await uploads.delete(record.id, "key-1")
        return record, seen, others.value, deleted, await uploads.get(record.id, "key-1")

    record, (own, other, content, image), refused, deleted, after = asyncio.run(scenario())
    assert own == record and other is None and content == data and image.size == (16, 8)
    assert record.content_type == "image/webp" and record.size == len(data) and record.metadata == {"k": "v"}
    assert refused.field == "input.images[0]" and "not found" in refused.reason
    assert deleted == (False, True) and after is None
    assert not list((tmp_path / "files").glob("*/*"))  # the bytes went with the record


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (lambda: b"", "empty"),
        (lambda: b"import os\n", "not a png, jpeg or webp image"),
        (lambda: image_bytes("GIF"), "not a png, jpeg or webp image"),
        (lambda: image_bytes("PNG")[:33], "not an image"),
        (lambda: b"\xff\xd8\xff" + b"\0" * 2 * 2**20, "2.0 MiB; the limit is 1 MiB"),
        (lambda: image_bytes("PNG", (8200, 8200), "1"), "64 megapixels"),  # a small file, a huge image
    ],
)
def test_anything_but_a_usable_image_is_refused_naming_content(uploads, data, words):
    uploads.settings.max_image_bytes = 2**20
    data = data()
    with pytest.raises(InvalidRequest) as refused:
        asyncio.run(uploads.create(data, "upload", {}, None))
    assert refused.value.field == "content" and words in refused.value.reason


def test_formats_are_told_by_their_bytes():
    assert [sniffed_format(image_bytes(fmt)) for fmt in ("PNG", "JPEG", "WEBP", "BMP")] == [
        "png", "jpeg", "webp", None]  # fmt: skip


def request(base_url: str, public: str | None = None):
    service = SimpleNamespace(settings=SimpleNamespace(public_base_url=public), uploads=SimpleNamespace(
        forever=lambda record: False))  # fmt: skip
    return service, SimpleNamespace(base_url=base_url)


@pytest.mark.parametrize(
    ("url", "found"),
    [
        (f"http://127.0.0.1:8000/v1/files/{FILE_ID}/download", FILE_ID),
        (f"HTTP://127.0.0.1:8000/v1/files/{FILE_ID}/download", FILE_ID),
        (f"https://klein.example/v1/files/{FILE_ID}/download", FILE_ID),  # --public-base-url
        (f"http://127.0.0.1:9000/v1/files/{FILE_ID}/download", None),  # another server
        (f"http://127.0.0.1:8000/v1/files/{FILE_ID}", None),
        (f"http://127.0.0.1:8000/v1/files/{FILE_ID}/download?x=1", None),
        (f"http://127.0.0.1:8000/v1/files/../{FILE_ID}/download", None),
        ("data:image/png;base64,AAAA", None),
    ],
)
def test_only_this_servers_file_urls_are_read_locally(url, found):
    service, http = request("http://127.0.0.1:8000/", "https://klein.example")
    assert own_file_id(service, http, url) == found


def test_the_file_object_is_what_replicate_python_parses(uploads):
    replicate = pytest.importorskip("replicate.file")
    record = asyncio.run(uploads.create(image_bytes("PNG"), "fox.png", {}, None))
    service, http = request("http://127.0.0.1:8000/")
    shown = _file(service, http, record)
    parsed = replicate.File(**ReplicateFile.model_validate(shown).model_dump())
    assert parsed.urls == {"get": f"http://127.0.0.1:8000/v1/files/{record.id}/download"}
    assert parsed.checksums["md5"] == parsed.etag == record.md5 and parsed.expires_at.endswith("Z")


def test_retention_housekeeping_deletes_expired_uploads_with_their_bytes(uploads, tmp_path):
    housekeeping = Housekeeping(uploads.jobs, uploads.store, lease_s=30, max_attempts=1,
                                settle=lambda *_: None, wake=lambda: None)  # fmt: skip
    uploads.settings.retention_hours = 0.01 / 3600  # 10 ms

    async def scenario():
        record = await uploads.create(image_bytes("PNG"), "a.png", {}, None)
        await asyncio.sleep(0.05)
        await housekeeping.expire_jobs(time.time())
        return record, await uploads.jobs.expire_uploads(time.time() + 3600)

    record, left = asyncio.run(scenario())
    assert left == [] and uploads.store.read(record.storage_key) is None
    assert not list((tmp_path / "files").glob("*/*"))

"""GET /v1/loras: the --lora-dir files for the console's LoRA picker, behind the API keys, capped."""

from fastapi import FastAPI
from fastapi.testclient import TestClient

from kleinserve.api import loras
from kleinserve.api.access import AccessMiddleware
from kleinserve.api.errors import install_error_handlers
from kleinserve.service.lora_sources import MAX_LISTED, LoraSources
from kleinserve.service.outbound import Outbound
from kleinserve.settings import Settings

PATH = "/v1/loras"
KEY = {"Authorization": "Bearer key-a"}


def client(tmp_path, lora_dir) -> TestClient:
    sources = LoraSources(Outbound((), max_bytes=1000, timeout_s=1), tmp_path / "cache", lora_dir, 1000)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(loras.router(type("Service", (), {"loras": sources})))
    app.add_middleware(AccessMiddleware, settings=Settings(api_keys=("key-a",), data_dir=tmp_path))
    return TestClient(app)


def test_the_lora_dir_files_are_listed_for_a_key(tmp_path):
    folder = tmp_path / "loras"
    (folder / "styles").mkdir(parents=True)
    (folder / "styles" / "ink.safetensors").write_bytes(b"12345")
    answer = client(tmp_path, folder).get(PATH, headers=KEY)
    assert answer.status_code == 200
    assert answer.json() == {
        "data": [{"path": "styles/ink.safetensors", "size_bytes": 5}],
        "lora_dir": True,
        "truncated": False,
    }
    assert client(tmp_path, folder).get(PATH).status_code == 401
    schema = client(tmp_path, folder).app.openapi()["paths"][PATH]["get"]["responses"]["200"]
    assert schema["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/LoraList"}


def test_without_a_lora_dir_the_list_is_empty_and_says_so(tmp_path):
    answer = client(tmp_path, None).get(PATH, headers=KEY)
    assert answer.json() == {"data": [], "lora_dir": False, "truncated": False}


def test_a_long_list_is_cut_and_says_so(tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    for index in range(MAX_LISTED + 1):
        (folder / f"{index:04}.safetensors").write_bytes(b"x")
    body = client(tmp_path, folder).get(PATH, headers=KEY).json()
    assert len(body["data"]) == MAX_LISTED and body["truncated"] is True
    assert body["data"][0]["path"] == "0000.safetensors"

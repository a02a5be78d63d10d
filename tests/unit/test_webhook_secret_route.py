"""GET /v1/webhooks/default/secret: Replicate's shape, behind the API keys (every key sees the one secret)."""

from types import SimpleNamespace

from fastapi import FastAPI
from fastapi.testclient import TestClient

from kleinserve.api import webhook_secret
from kleinserve.api.access import AccessMiddleware
from kleinserve.api.errors import install_error_handlers
from kleinserve.settings import Settings
from kleinserve.webhook_signing import new_secret

PATH = "/v1/webhooks/default/secret"


def test_each_key_sees_the_one_secret_and_no_key_sees_none(tmp_path):
    secret = new_secret()
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(webhook_secret.router(SimpleNamespace(webhook_secret=secret)))
    settings = Settings(api_keys=("key-a", "key-b"), data_dir=tmp_path)
    app.add_middleware(AccessMiddleware, settings=settings)
    client = TestClient(app)
    for key in ("key-a", "key-b"):
        answer = client.get(PATH, headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200 and answer.json() == {"key": secret}
    assert client.get(PATH).status_code == 401
    assert client.get(PATH, headers={"Authorization": "Bearer wrong"}).status_code == 401
    documented = app.openapi()["paths"][PATH]["get"]["responses"]["200"]["content"]["application/json"]
    assert documented["schema"] == {"$ref": "#/components/schemas/WebhookSecret"}

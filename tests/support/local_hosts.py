"""Stand-ins, on 127.0.0.1, for the remote hosts a fal user points the server at: a site serving image_urls
(with the broken cases: 404, not an image, a redirect to a private address, too large, too slow) and a
webhook receiver that records what it gets and can be told to fail."""

from __future__ import annotations

import io
import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from support.images import random_image

FORMATS = {"png": ("PNG", "image/png"), "jpg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}


class LocalHost:
    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.owner = self
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ImageHost(LocalHost):
    """GET /{name}.{png,jpg,webp} serves a picture; sizes are in SIZES."""

    SIZES: ClassVar = {"a.png": (160, 128), "b.jpg": (96, 96), "c.webp": (128, 160), "d.png": (112, 80)}

    def __init__(self):
        self.files = {}
        for index, (name, size) in enumerate(self.SIZES.items()):
            buffer = io.BytesIO()
            random_image(*size, seed=index).save(buffer, FORMATS[name.rsplit(".", 1)[1]][0])
            self.files[name] = buffer.getvalue()
        super().__init__(_ImageHandler)


class _ImageHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        host: ImageHost = self.server.owner
        name = self.path.lstrip("/")
        if name in host.files:
            return self._send(200, host.files[name], FORMATS[name.rsplit(".", 1)[1]][1])
        if name == "page.html":
            return self._send(200, b"<html>not an image</html>", "text/html; charset=utf-8")
        if name == "redirect-private":
            self.send_response(302)
            self.send_header("Location", "http://10.1.2.3/a.png")
            self.end_headers()
            return None
        if name == "huge.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(64 * 2**20))
            self.end_headers()
            return None
        if name == "slow.png":
            time.sleep(3)
            return self._send(200, host.files["a.png"], "image/png")
        return self._send(404, b"not found", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class WebhookReceiver(LocalHost):
    """POST /{name}: records the JSON body; answers 500 to the first `failures[name]` posts, then 200.
    `raw[name]` keeps every attempt, failed ones too: its headers (lower-case names) and body bytes."""

    def __init__(self):
        self.received: dict[str, list[dict]] = defaultdict(list)
        self.raw: dict[str, list[tuple[dict[str, str], bytes]]] = defaultdict(list)
        self.attempts: dict[str, int] = defaultdict(int)
        self.failures: dict[str, int] = {}
        self.lock = threading.Lock()
        super().__init__(_WebhookHandler)

    def deliveries(self, name: str, at_least: int, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received[name]) >= at_least:
                    return list(self.received[name])
            time.sleep(0.05)
        raise AssertionError(f"{name}: {len(self.received[name])} deliveries after {timeout} s")


class _WebhookHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        receiver: WebhookReceiver = self.server.owner
        name = self.path.lstrip("/")
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        body = json.loads(raw)
        with receiver.lock:
            receiver.raw[name].append(({k.lower(): v for k, v in self.headers.items()}, raw))
            receiver.attempts[name] += 1
            failing = receiver.attempts[name] <= receiver.failures.get(name, 0)
            if not failing:
                receiver.received[name].append(body)
        self.send_response(500 if failing else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

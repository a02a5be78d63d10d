"""The HTTP server process (`serve`): its app (build_app), run by uvicorn with two things uvicorn lacks.

- A header deadline: a connection must send a whole request head within `header_timeout_s` of opening
  (or of its previous response), or it is closed; slow or stalled clients cannot hold connections open.
  (Stalled bodies are bounded in api/access.py.)
- A graceful shutdown: on SIGTERM the service stops taking work, fails queued jobs with a clear reason,
  lets running batches finish within `shutdown_grace_s`, then stops them; every waiting client gets an
  answer in its dialect's shape before the connections close.
"""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from kleinserve.api.app import create_app
from kleinserve.metrics import Metrics
from kleinserve.roles.assembly import open_stores, serve_service
from kleinserve.settings import Settings

RESPONSE_MARGIN_S = 5.0  # after the grace, time to write the last answers before uvicorn cuts connections


def build_app(settings: Settings) -> FastAPI:
    """`serve`'s HTTP app (and each of Ray Serve's API replicas'): the service its --role asks for, over the
    stores --database-url and --store name."""
    jobs, store = open_stores(settings)
    return create_app(serve_service(settings, jobs, store, Metrics()))


def run(app, settings: Settings, log_level: str) -> None:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
        log_level=log_level,
        http=_with_header_deadline(settings.header_timeout_s),
        timeout_graceful_shutdown=settings.shutdown_grace_s + RESPONSE_MARGIN_S,
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=list(settings.trusted_proxies) or None,
    )
    _GracefulServer(config, app.state.service, settings.shutdown_grace_s).run()


class _GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service, grace_s: float):
        super().__init__(config)
        self.service = service
        self.grace_s = grace_s

    async def shutdown(self, sockets=None) -> None:
        self.service.begin_shutdown(self.grace_s)
        await super().shutdown(sockets)


def _with_header_deadline(timeout_s: float) -> type[H11Protocol]:
    class HeaderDeadlineProtocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_deadline()

        def _arm_header_deadline(self) -> None:
            waiting_after = self.cycle  # a new request head replaces the cycle
            self.loop.call_later(timeout_s, self._header_deadline, waiting_after)

        def _header_deadline(self, waiting_after) -> None:
            idle = self.cycle is None or self.cycle.response_complete
            if self.cycle is waiting_after and idle and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineProtocol

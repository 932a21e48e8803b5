"""The tornado application: the route table.

Owns ``ROUTES``, ``make_app`` and ``make_server`` (the HTTP server, ``server.web.edge``, and
its limits, the same in production and in tests). The services the handlers share are built
per worker process (``server.services``), after any fork, and passed to every route.
"""

from typing import Any

from tornado.httputil import HTTPServerRequest
from tornado.routing import PathMatches
from tornado.web import Application

from server.faces.anthropic.api import CountTokens, Messages, ModelInfo, ModelInfoList
from server.faces.openai.api import ChatCompletions, ModelList, OneModel
from server.faces.responses.api import OneResponse, Responses
from server.ops.admin import (
    CaptchaPush,
    InstanceList,
    PoolHealthCheck,
    PoolStatus,
    PoolUpdate,
    UpstreamCheck,
    UpstreamConfig,
)
from server.ops.dashboard import (
    DASHBOARD_STATIC,
    DashboardData,
    DashboardKey,
    DashboardPage,
    Login,
    Logout,
)
from server.ops.docs import SWAGGER_STATIC, Docs, DocsStatic, OpenAPI
from server.ops.health import Alive, Ready
from server.ops.keys_api import KeyList, OneKey, UsageReport
from server.ops.metrics import Metrics
from server.services import Services
from server.web.edge import EdgeServer
from server.web.handler import NotFound

__all__ = ["ROUTES", "WithHeader", "make_app", "make_server"]


class WithHeader(PathMatches):
    """A path that matches only requests carrying ``header``: one path, two faces."""

    def __init__(self, path: str, header: str) -> None:
        super().__init__(path)
        self.header = header

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        return super().match(request) if self.header in request.headers else None


ROUTES: list[tuple[str | PathMatches, type]] = [
    (r"/v1/chat/completions", ChatCompletions),
    (WithHeader(r"/v1/models", "anthropic-version"), ModelInfoList),
    (WithHeader(r"/v1/models/(.+)", "anthropic-version"), ModelInfo),
    (r"/v1/models", ModelList),
    (r"/v1/models/(.+)", OneModel),
    (r"/v1/responses", Responses),
    (r"/v1/responses/([^/]+)", OneResponse),
    (r"/v1/messages", Messages),
    (r"/v1/messages/count_tokens", CountTokens),
    (r"/v1/token-pool/status", PoolStatus),
    (r"/v1/token-pool/health-check", PoolHealthCheck),
    (r"/v1/token-pool/update", PoolUpdate),
    (r"/v1/instances", InstanceList),
    (r"/v1/captcha", CaptchaPush),
    (r"/v1/upstream/check", UpstreamCheck),
    (r"/v1/upstream/config", UpstreamConfig),
    (r"/v1/keys", KeyList),
    (r"/v1/keys/([0-9a-f]{12})", OneKey),
    (r"/v1/usage", UsageReport),
    (r"/admin", DashboardPage),
    (r"/admin/login", Login),
    (r"/admin/logout", Logout),
    (r"/admin/data", DashboardData),
    (r"/admin/keys/([0-9a-f]{12})/(disable|enable)", DashboardKey),
    (r"/healthz", Alive),
    (r"/readyz", Ready),
    (r"/metrics", Metrics),
    (r"/openapi.json", OpenAPI),
    (r"/docs", Docs),
]


def make_app(services: Services) -> Application:
    routes: list[tuple[str | PathMatches, type, dict[str, object]]] = [
        (path, handler, {"services": services}) for path, handler in ROUTES
    ]
    routes.append((r"/docs/static/(.*)", DocsStatic, {"path": SWAGGER_STATIC}))
    routes.append((r"/admin/static/(.*)", DocsStatic, {"path": DASHBOARD_STATIC}))
    return Application(
        routes,
        default_handler_class=NotFound,
        default_handler_args={"services": services},
    )


def make_server(services: Services, **options: object) -> EdgeServer:
    """The HTTP server for ``make_app(services)``; ``options`` are tornado's, over these."""
    settings = services.settings
    limits: dict[str, object] = {
        "max_body_size": settings.max_body_bytes + 1024,
        "body_timeout": settings.body_timeout,
        "idle_connection_timeout": settings.idle_connection_timeout,
        "max_header_size": settings.max_header_bytes,
        "max_connections": settings.max_connections,
    }
    return EdgeServer(make_app(services), **{**limits, **options})

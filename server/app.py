"""The tornado application: the route table.

Owns ``ROUTES``, ``make_app`` and ``make_server`` (the HTTP server, ``server.web.edge``, and
its limits, the same in production and in tests). The services the handlers share are built
per worker process (``server.services``), after any fork, and passed to every route. A route
whose path is a plain literal that no rule before it can match is found by one dict lookup
(``Gateway.find_handler``); the others by tornado's rules in order: its router's machinery
was 2.5 % of a completion's CPU for the first rule's match.
"""

import re
from typing import Any

from tornado.httputil import HTTPServerRequest
from tornado.routing import PathMatches
from tornado.web import Application, RequestHandler, _HandlerDelegate

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

__all__ = ["ROUTES", "Gateway", "WithHeader", "exact_routes", "make_app", "make_server"]


class WithHeader(PathMatches):
    """A path that matches only requests carrying ``header``: one path, two faces."""

    def __init__(self, path: str, header: str) -> None:
        super().__init__(path)
        self.header = header

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        return super().match(request) if self.header in request.headers else None


ROUTES: list[tuple[str | PathMatches, type[RequestHandler]]] = [
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


Route = tuple[str | PathMatches, type[RequestHandler], dict[str, object]]
_PATTERN = re.compile(r"[()\[\]{}?*+|^$\\]")  # what makes a path more than a literal


def exact_routes(routes: list[Route]) -> dict[str, tuple[type[RequestHandler], dict[str, object]]]:
    """The literal paths among ``routes`` that no rule before them matches (those would take
    the request first, in tornado's order), with their handler and its arguments."""
    exact: dict[str, tuple[type[RequestHandler], dict[str, object]]] = {}
    earlier: list[re.Pattern[str]] = []
    for matcher, handler, kwargs in routes:
        if isinstance(matcher, str):
            if not _PATTERN.search(matcher) and not any(r.match(matcher) for r in earlier):
                exact.setdefault(matcher, (handler, kwargs))
            matcher = PathMatches(matcher)  # compiled as tornado's rules compile it
        earlier.append(matcher.regex)
    return exact


class Gateway(Application):
    """tornado's ``Application``, with the literal routes found by one dict lookup."""

    def __init__(self, routes: list[Route], **settings: Any) -> None:
        super().__init__(routes, **settings)
        self.exact = exact_routes(routes)

    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> _HandlerDelegate:
        found = self.exact.get(request.path)
        if found is None:
            return super().find_handler(request, **kwargs)
        return self.get_handler_delegate(request, found[0], found[1])


def make_app(services: Services) -> Application:
    routes: list[Route] = [(path, handler, {"services": services}) for path, handler in ROUTES]
    routes.append((r"/docs/static/(.*)", DocsStatic, {"path": SWAGGER_STATIC}))
    routes.append((r"/admin/static/(.*)", DocsStatic, {"path": DASHBOARD_STATIC}))
    return Gateway(
        routes,
        default_handler_class=NotFound,
        default_handler_args={"services": services},
    )


def make_server(services: Services, **options: Any) -> EdgeServer:
    """The HTTP server for ``make_app(services)``; ``options`` are ``EdgeServer``'s, over these."""
    settings = services.settings
    limits: dict[str, Any] = {
        "max_body_size": settings.max_body_bytes + 1024,
        "body_timeout": settings.body_timeout,
        "idle_connection_timeout": settings.idle_connection_timeout,
        "max_header_size": settings.max_header_bytes,
        "max_connections": settings.max_connections,
    }
    return EdgeServer(make_app(services), **{**limits, **options})

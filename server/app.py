"""The tornado application: the route table.

Owns ``ROUTES`` and ``make_app``. The services the handlers share are built per worker
process (``server.services``), after any fork, and passed to every route.
"""

from tornado.web import Application, StaticFileHandler

from server.faces.anthropic.api import CountTokens, Messages
from server.faces.openai.api import ChatCompletions, ModelList, OneModel
from server.ops.admin import InstanceList, PoolHealthCheck, PoolStatus, PoolUpdate
from server.ops.docs import SWAGGER_STATIC, Docs, OpenAPI
from server.ops.health import Alive, Ready
from server.ops.metrics import Metrics
from server.services import Services
from server.web.handler import NotFound

__all__ = ["ROUTES", "make_app"]

ROUTES = [
    (r"/v1/chat/completions", ChatCompletions),
    (r"/v1/models", ModelList),
    (r"/v1/models/(.+)", OneModel),
    (r"/v1/messages", Messages),
    (r"/v1/messages/count_tokens", CountTokens),
    (r"/v1/token-pool/status", PoolStatus),
    (r"/v1/token-pool/health-check", PoolHealthCheck),
    (r"/v1/token-pool/update", PoolUpdate),
    (r"/v1/instances", InstanceList),
    (r"/healthz", Alive),
    (r"/readyz", Ready),
    (r"/metrics", Metrics),
    (r"/openapi.json", OpenAPI),
    (r"/docs", Docs),
]


def make_app(services: Services) -> Application:
    routes = [(path, handler, {"services": services}) for path, handler in ROUTES]
    routes.append((r"/docs/static/(.*)", StaticFileHandler, {"path": SWAGGER_STATIC}))
    return Application(
        routes,
        default_handler_class=NotFound,
        default_handler_args={"services": services},
    )

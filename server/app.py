"""The tornado application: routes, and the services the handlers share.

Owns ``Services`` and ``make_app``. Routes are a table; the services (settings, upstream
client, token source) are built once per worker process, after any fork.
"""

from dataclasses import dataclass

from tornado.web import Application

from server.openai_api import ChatCompletions, ModelList, OneModel
from server.settings import Settings
from server.tokens import GuestTokens, NoTokens, TokenSource
from server.web import NotFound
from server.zai.client import ZaiClient

__all__ = ["Services", "make_app"]


@dataclass(slots=True)
class Services:
    settings: Settings
    client: ZaiClient
    tokens: TokenSource


ROUTES = [
    (r"/v1/chat/completions", ChatCompletions),
    (r"/v1/models", ModelList),
    (r"/v1/models/(.+)", OneModel),
]


def make_services(settings: Settings) -> Services:
    client = ZaiClient(settings)
    tokens: TokenSource = GuestTokens(client) if settings.anonymous_mode else NoTokens()
    return Services(settings, client, tokens)


def make_app(settings: Settings, services: Services | None = None) -> Application:
    services = services or make_services(settings)
    routes = [(path, handler, {"services": services}) for path, handler in ROUTES]
    return Application(
        routes,
        default_handler_class=NotFound,
        default_handler_args={"services": services},
        services=services,
    )

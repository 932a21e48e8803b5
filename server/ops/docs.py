"""The API described: ``/openapi.json`` generated from the msgspec schemas, and ``/docs``.

Owns ``openapi_document`` and the two routes. Request and response bodies are the Structs the
gateway decodes requests with (``server.faces.openai.wire``, ``server.faces.responses.wire``)
and describes its answers with (``server.ops.openapi_schema``), turned into JSON Schema by
msgspec. ``/docs`` is Swagger UI,
served from the ``swagger-ui-py`` package's files (no CDN: it works offline) by ``DocsStatic``;
every error of these routes (a missing file, a path with a NUL byte, a POST) is the JSON shape.
"""

import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
from tornado.web import HTTPError, RequestHandler, StaticFileHandler

from server.faces.openai.wire import ChatRequest
from server.faces.responses.wire import ResponsesRequest
from server.ops.openapi_schema import (
    ChatCompletion,
    ChatCompletionChunk,
    ErrorBody,
    ModelList,
    ModelObject,
)
from server.web.handler import write_json_error

__all__ = ["SWAGGER_STATIC", "Docs", "DocsStatic", "OpenAPI", "openapi_document"]


def _package_dir(name: str) -> Path:
    """Where an installed package is, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the {name} package is not installed")
    return Path(spec.submodule_search_locations[0])


# Located without importing the package (its import costs memory the server never uses).
SWAGGER_STATIC = str(_package_dir("swagger_ui") / "static")
_REF = "#/components/schemas/{name}"


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF.format(name=ref)}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(code): {"description": "an OpenAI-shaped error", "content": _json("ErrorBody")}
        for code in codes
    }


@cache
def openapi_document() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [
            ChatRequest,
            ResponsesRequest,
            ChatCompletion,
            ChatCompletionChunk,
            ModelList,
            ModelObject,
            ErrorBody,
        ],
        ref_template=_REF,
    )
    bearer: list[dict[str, list[str]]] = [{"apiKey": []}]
    chat = {
        "summary": "Create a chat completion (OpenAI Chat Completions)",
        "security": bearer,
        "requestBody": {"required": True, "content": _json("ChatRequest")},
        "responses": {
            "200": {
                "description": "a completion, or with stream=true an SSE stream of "
                "ChatCompletionChunk events ending with data: [DONE]",
                "content": {
                    **_json("ChatCompletion"),
                    "text/event-stream": {
                        "schema": {"$ref": _REF.format(name="ChatCompletionChunk")}
                    },
                },
            },
            **_errors(400, 401, 403, 404, 413, 429, 502, 503, 504),
        },
    }
    response_id = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    stored = {"description": "a stored response object (see the README, 'The Responses API')"}
    responses = {
        "summary": "Create a response (OpenAI Responses API, what Codex speaks)",
        "security": bearer,
        "requestBody": {"required": True, "content": _json("ResponsesRequest")},
        "responses": {
            "200": {
                "description": "a response object, or with stream=true an SSE stream of "
                "response.* events ending with response.completed (see the README)",
            },
            **_errors(400, 401, 403, 404, 413, 429, 502, 503, 504),
        },
    }
    admin_answers = {
        "200": {
            "description": "see the README ('The pool in Redis', 'When chat.z.ai pushes back')"
        },
        **_errors(401, 404),
    }
    admin = {"security": [{"adminToken": []}], "responses": admin_answers}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "zai-gateway",
            "version": "0.1.0",
            "description": "OpenAI-compatible gateway to Z.AI's GLM models.",
        },
        "paths": {
            "/v1/chat/completions": {"post": chat},
            "/v1/responses": {"post": responses},
            "/v1/responses/{id}": {
                "get": {
                    "summary": "A stored response",
                    "security": bearer,
                    "parameters": response_id,
                    "responses": {"200": stored, **_errors(401, 404)},
                },
                "delete": {
                    "summary": "Delete a stored response",
                    "security": bearer,
                    "parameters": response_id,
                    "responses": {"200": {"description": "deleted"}, **_errors(401, 404)},
                },
            },
            "/v1/models": {
                "get": {
                    "summary": "List models",
                    "security": bearer,
                    "responses": {
                        "200": {"description": "the model table", "content": _json("ModelList")},
                        **_errors(401),
                    },
                }
            },
            "/v1/models/{model}": {
                "get": {
                    "summary": "One model",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "model",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {"description": "the model", "content": _json("ModelObject")},
                        **_errors(401, 404),
                    },
                }
            },
            "/v1/token-pool/status": {"get": {"summary": "Pool status (admin)", **admin}},
            "/v1/token-pool/health-check": {
                "post": {"summary": "Check pool tokens (admin)", **admin}
            },
            "/v1/token-pool/update": {
                "post": {"summary": "Add, remove or replace pool tokens (admin)", **admin}
            },
            "/v1/instances": {"get": {"summary": "Live gateway processes (admin)", **admin}},
            "/v1/captcha": {"post": {"summary": "Push single-use captcha params (admin)", **admin}},
            "/v1/upstream/check": {
                "get": {"summary": "Self-check of the upstream, step by step (admin)", **admin}
            },
            "/v1/upstream/config": {
                "get": {"summary": "The live upstream config (admin)", **admin},
                "put": {
                    "summary": "Change live upstream settings for every replica (admin)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "description": "setting name (lower case) -> value; "
                                    "null puts it back to the environment's",
                                    "example": {"zai_fe_version": "prod-fe-1.2.0"},
                                }
                            }
                        },
                    },
                    **admin,
                    "responses": {**admin_answers, **_errors(400)},
                },
                "delete": {"summary": "Drop every live change (admin)", **admin},
            },
            "/healthz": {
                "get": {
                    "summary": "The process answers",
                    "responses": {"200": {"description": "alive"}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Ready for traffic (Redis answers, not draining)",
                    "responses": {
                        "200": {"description": "ready; serves: pooled, guests or nothing"},
                        "503": {"description": "not ready"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text format"}},
                }
            },
        },
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer"},
                "adminToken": {"type": "http", "scheme": "bearer"},
            },
        },
    }


class OpenAPI(RequestHandler):
    def initialize(self, services: object) -> None:
        self.services = services

    def write_error(self, status_code: int, **kwargs: object) -> None:
        write_json_error(self, status_code)

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(msgspec.json.encode(openapi_document()))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>zai-gateway API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>
"""


class Docs(OpenAPI):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(_PAGE)


class DocsStatic(StaticFileHandler):
    """Swagger UI's files. A path the file system cannot even look up (a NUL byte: tornado's
    own handler was a 500 with an HTML page) is a 404 like any missing file."""

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        if "\x00" in absolute_path:
            raise HTTPError(404)
        return super().validate_absolute_path(root, absolute_path)

    def write_error(self, status_code: int, **kwargs: object) -> None:
        write_json_error(self, status_code)

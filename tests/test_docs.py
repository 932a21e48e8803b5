"""``/openapi.json`` is generated from the msgspec schemas and matches what is served;
``/docs`` serves Swagger UI from local files."""

import json
import re

import msgspec
from tornado.httpclient import AsyncHTTPClient

from server.ops.openapi_schema import ChatCompletion, ChatCompletionChunk, ErrorBody, ModelList
from tests.conftest import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def fetch(url: str, **kwargs):
    return await AsyncHTTPClient().fetch(url, raise_error=False, **kwargs)


def refs(node) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if "$ref" in node else set()
        return found.union(*(refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node))
    return set()


async def test_openapi_document_is_complete(gateway):
    gw = await gateway("home", "guest_auth", "stream_glm5_plain_thinking")
    doc = json.loads((await fetch(gw.url + "/openapi.json")).body)
    assert doc["openapi"] == "3.1.0"
    schemas = doc["components"]["schemas"]
    for ref in refs(doc):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    request = schemas["ChatRequest"]
    assert {"model", "messages"} <= set(request["required"])
    assert "tools" in request["properties"] and "stream_options" in request["properties"]
    assert {"/v1/chat/completions", "/v1/models", "/metrics"} <= set(doc["paths"])
    assert {"/v1/responses", "/v1/responses/{id}"} <= set(doc["paths"])
    assert {"model", "input"} <= set(schemas["ResponsesRequest"]["required"])
    assert "tools" in schemas["ResponsesRequest"]["properties"]


async def test_served_bodies_match_the_documented_schemas(gateway):
    gw = await gateway("home", "guest_auth", "stream_glm5_plain_thinking")
    body = b'{"model": "GLM-4.5-Thinking", "messages": [{"role": "user", "content": "hi"}]'
    reply = await fetch(
        gw.url + "/v1/chat/completions", method="POST", headers=AUTH, body=body + b"}"
    )
    msgspec.json.decode(reply.body, type=ChatCompletion, strict=True)
    stream = await fetch(
        gw.url + "/v1/chat/completions",
        method="POST",
        headers=AUTH,
        body=body + b', "stream": true, "stream_options": {"include_usage": true}}',
    )
    events = re.findall(rb"data: (.*)\n\n", stream.body)
    assert events[-1] == b"[DONE]"
    for event in events[:-1]:
        msgspec.json.decode(event, type=ChatCompletionChunk, strict=True)
    models = await fetch(gw.url + "/v1/models", headers=AUTH)
    msgspec.json.decode(models.body, type=ModelList, strict=True)
    error = await fetch(gw.url + "/v1/models/nope", headers=AUTH)
    msgspec.json.decode(error.body, type=ErrorBody, strict=True)


async def test_docs_page_and_its_files_are_served_locally(gateway):
    gw = await gateway("home", "guest_auth", "stream_glm5_plain_thinking")
    page = await fetch(gw.url + "/docs")
    assert page.code == 200 and b"SwaggerUIBundle" in page.body
    for src in re.findall(rb'(?:src|href)="(/docs/static/[^"]+)"', page.body):
        asset = await fetch(gw.url + src.decode())
        assert asset.code == 200 and len(asset.body) > 1000, src


async def test_docs_errors_are_json_and_a_nul_byte_is_a_404(gateway):
    # D11: /docs/static/%00 was tornado's HTML 500 (os.path.realpath: embedded null byte), and
    # every error of the docs routes was an HTML page.
    gw = await gateway("home", "guest_auth")
    cases = [
        ("GET", "/docs/static/%00", 404, "not_found"),
        ("GET", "/docs/static/x%00.js", 404, "not_found"),
        ("GET", "/docs/static/no-such-file.js", 404, "not_found"),
        ("GET", "/docs/static/..%2f..%2fpyproject.toml", 403, "invalid_request"),
        ("POST", "/docs/static/swagger-ui.css", 405, "method_not_allowed"),
        ("POST", "/docs", 405, "method_not_allowed"),
        ("POST", "/openapi.json", 405, "method_not_allowed"),
    ]
    for method, path, status, code in cases:
        reply = await fetch(gw.url + path, method=method, body=b"" if method == "POST" else None)
        assert reply.code == status, (path, reply.code, reply.body[:100])
        assert reply.headers["Content-Type"] == "application/json", path
        assert reply.headers["x-should-retry"] == "false"
        assert msgspec.json.decode(reply.body)["error"]["code"] == code, path
    css = await fetch(gw.url + "/docs/static/swagger-ui.css")
    assert css.code == 200 and css.headers["Content-Type"] == "text/css"

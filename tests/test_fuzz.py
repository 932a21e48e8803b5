"""Property-based fuzzing of every route: never a 5xx, never a hang, every 4xx well formed.

The gateway and its cassette upstream run in a background thread (hypothesis drives
blocking requests, one example at a time); bodies range from random bytes through random
JSON to almost-valid requests with wrong types, unknown fields and odd values.
"""

import asyncio
import http.client
import json
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.services import make_services
from server.settings import load_settings
from tests.conftest import API_KEY
from tests.fake_upstream import FakeUpstream

ADMIN = "admin-fuzz-0123456789"
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
roles = st.sampled_from(["system", "user", "assistant", "tool", "developer", "function", "x"])
content = st.one_of(
    st.text(max_size=30),
    json_values,
    st.lists(
        st.fixed_dictionaries(
            {
                "type": st.sampled_from(["text", "image_url", "tool_use", "tool_result", "x"]),
                "text": st.text(max_size=10),
            }
        ),
        max_size=2,
    ),
)
message = st.fixed_dictionaries(
    {"role": roles, "content": content},
    optional={"tool_calls": json_values, "name": st.text(max_size=5), "tool_call_id": json_values},
)
models = st.sampled_from(["GLM-4.5", "glm-4.7-thinking", "claude-sonnet-5-5", "nope", "", 7])
chatty = st.fixed_dictionaries(
    {"model": models, "messages": st.lists(message, max_size=3)},
    optional={
        "stream": st.booleans(),
        "temperature": json_values,
        "max_tokens": json_values,
        "tools": json_values,
        "tool_choice": json_values,
        "stop": json_values,
        "n": json_values,
        "stream_options": json_values,
        "system": json_values,
        "thinking": json_values,
        "stop_sequences": json_values,
        "extra": json_values,
    },
)
item = st.fixed_dictionaries(
    {"type": st.sampled_from(["message", "function_call", "function_call_output", "x"])},
    optional={
        "role": roles,
        "content": content,
        "call_id": json_values,
        "name": json_values,
        "arguments": json_values,
        "output": content,
    },
)
responsy = st.fixed_dictionaries(
    {"model": models, "input": st.one_of(st.text(max_size=30), st.lists(item, max_size=3))},
    optional={
        "stream": st.booleans(),
        "instructions": json_values,
        "tools": json_values,
        "tool_choice": json_values,
        "text": json_values,
        "reasoning": json_values,
        "metadata": json_values,
        "max_output_tokens": json_values,
        "previous_response_id": json_values,
        "store": json_values,
    },
)
bodies = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    chatty.map(lambda v: json.dumps(v).encode()),
)
responses_bodies = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    responsy.map(lambda v: json.dumps(v).encode()),
)
# every admin route that reads a body, with the method that does
ADMIN_ROUTES = [
    ("POST", "/v1/token-pool/update"),
    ("POST", "/v1/token-pool/health-check"),
    ("PUT", "/v1/upstream/config"),
    ("POST", "/v1/keys"),
    ("PATCH", "/v1/keys/0123456789ab"),
    ("POST", "/v1/captcha"),
]


class Served:
    """The fake upstream and a gateway, on their own loop in a thread."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(20)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        from tornado.httpserver import HTTPServer
        from tornado.netutil import bind_sockets

        from server.app import make_app

        self.fake = FakeUpstream("home", "guest_auth", "stream_glm5_plain_thinking")
        base = await self.fake.start()
        settings_ = load_settings(
            _env_file=None,
            auth_token=API_KEY,
            zai_base_url=base,
            admin_token=ADMIN,
            guest_reserve=0,
            max_body_bytes=4096,
        )
        self.services = make_services(settings_)
        await self.services.start()
        sockets = bind_sockets(0, "127.0.0.1")
        self.server = HTTPServer(make_app(self.services), max_body_size=8192)
        self.server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]

    def request(self, method: str, path: str, body: bytes | None, headers: dict) -> tuple:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            conn.request(method, path, body=body, headers=headers)
            reply = conn.getresponse()
            return reply.status, reply.getheader("Content-Type") or "", reply.read()
        finally:
            conn.close()

    def close(self) -> None:
        async def stop() -> None:
            self.server.stop()
            await self.services.stop()
            await self.fake.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def served():
    served = Served()
    yield served
    served.close()


def check(status: int, content_type: str, body: bytes) -> None:
    assert status < 500, (status, body[:300])
    if status >= 400:
        error = json.loads(body)
        detail = error["error"]
        assert isinstance(detail["message"], str) and detail["message"]
        assert isinstance(detail["type"], str)
        if "type" not in error:  # OpenAI shape; the Anthropic one has "type": "error"
            assert isinstance(detail["code"], str)
    elif content_type.startswith("text/event-stream"):
        assert body.rstrip().endswith((b"data: [DONE]", b'"type":"message_stop"}'))


FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


@FUZZ
@given(body=bodies)
def test_chat_completions(served, body):
    check(*served.request("POST", "/v1/chat/completions", body, AUTH))


@FUZZ
@given(body=bodies)
def test_messages(served, body):
    check(*served.request("POST", "/v1/messages", body, {**AUTH, "anthropic-version": "x"}))


@FUZZ
@given(body=bodies)
def test_count_tokens(served, body):
    check(*served.request("POST", "/v1/messages/count_tokens", body, AUTH))


@FUZZ
@given(body=responses_bodies)
def test_responses(served, body):
    check(*served.request("POST", "/v1/responses", body, AUTH))


@FUZZ
@given(body=bodies, route=st.sampled_from(ADMIN_ROUTES))
def test_admin_routes(served, body, route):
    method, path = route
    check(*served.request(method, path, body, {"Authorization": f"Bearer {ADMIN}"}))


@FUZZ
@given(
    path=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_./%", max_size=30),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    key=st.sampled_from(["", API_KEY, "wrong"]),
)
def test_any_route_and_method(served, path, method, key):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    status, content_type, body = served.request(method, "/" + path, b"{}", headers)
    check(status, content_type, body)


def test_state_changing_routes_need_their_key(served):
    routes = [("POST", p) for p in ("/v1/chat/completions", "/v1/messages", "/v1/responses")]
    for method, path in routes + ADMIN_ROUTES:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-api-key": "wrong"}):
            status, _, _ = served.request(method, path, b"[]", headers)
            assert status == 401, (path, headers)
    status, _, _ = served.request(
        "POST", "/v1/token-pool/update", b"[]", {"Authorization": f"Bearer {API_KEY}"}
    )
    assert status == 401  # a client key is not the admin token

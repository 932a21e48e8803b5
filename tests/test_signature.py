"""The X-Signature algorithm against the two published, independently verified vectors."""

import pytest

from server.zai.signature import DEFAULT_KEY, sign

VECTORS = [
    (
        "123e4567-e89b-12d3-a456-426614174000",
        1774500300000,
        "user-42",
        "Reply with exactly: hi-clean",
        "1fe0f2184a7b73b49fa475d9bcad3740109976f7e23959ec1e1d5635eda17591",
    ),
    (
        "d9fb3ca8-676f-46c3-90c7-ddc70a74e46d",
        1771762969397,
        "d0d30815-b85a-4270-af63-b5346a9f3b13",
        "Reply with exactly: ok",
        "26be53ded6069ead38e6d4d596e54b020aaa2e17f75a4fa29325ead00484b214",
    ),
]


@pytest.mark.parametrize(("request_id", "ts", "user_id", "prompt", "expected"), VECTORS)
def test_published_vectors(request_id: str, ts: int, user_id: str, prompt: str, expected: str):
    assert sign(DEFAULT_KEY, request_id, ts, user_id, prompt) == expected


def test_key_is_a_setting():
    request_id, ts, user_id, prompt, expected = VECTORS[0]
    assert sign("junjie", request_id, ts, user_id, prompt) != expected


def test_same_window_other_timestamp_changes_signature():
    request_id, ts, user_id, prompt, expected = VECTORS[0]
    assert sign(DEFAULT_KEY, request_id, ts + 1, user_id, prompt) != expected


def test_completion_request_carries_the_page_fingerprint_and_a_valid_signature():
    """The query is cut and encoded once per dialect; what the upstream parses out of it must
    still be every field the web page sends, in its order, with this request's values."""
    from urllib.parse import parse_qsl, urlencode, urlsplit

    from server.core.chat import Conversation, Turn
    from server.core.models import require_model
    from server.zai.identity import Credential
    from server.zai.request import COMPLETIONS_PATH, Dialect, build_completion

    agent = "Mozilla/5.0 (X11; Linux) Chrome/140 & co"
    dialect = Dialect("https://chat.example:8443", DEFAULT_KEY, agent)
    cred = Credential("tok+/=en value", "user 42/é")
    conv = Conversation(require_model("GLM-4.5"), [Turn("user", "Reply: ok")])
    req = build_completion(dialect, cred, conv, "prod-fe-1.0", 1774500300123, "rid-1", "chat-9")
    url = urlsplit(req.url)
    assert f"{url.scheme}://{url.netloc}{url.path}" == dialect.base_url + COMPLETIONS_PATH
    fields = parse_qsl(url.query, keep_blank_values=True, strict_parsing=True)
    assert url.query == urlencode(fields)  # byte for byte as the standard library encodes
    names = [name for name, _ in fields]
    assert names[:6] == ["timestamp", "requestId", "user_id", "version", "platform", "token"]
    assert names[-1] == "signature_timestamp" and len(names) == len(set(names)) == 37
    query = dict(fields)
    assert query["timestamp"] == query["signature_timestamp"] == "1774500300123"
    assert (query["requestId"], query["user_id"]) == ("rid-1", cred.user_id)
    assert query["token"] == cred.token
    assert query["user_agent"] == agent and query["pathname"] == "/c/chat-9"
    assert query["current_url"] == "https://chat.example:8443/c/chat-9"
    assert (query["host"], query["hostname"]) == ("chat.example:8443", "chat.example")
    assert query["local_time"] == "2026-03-26T04:45:00.123Z"
    assert query["utc_time"] == "Thu, 26 Mar 2026 04:45:00 GMT"
    expected = sign(DEFAULT_KEY, "rid-1", 1774500300123, cred.user_id, "Reply: ok")
    assert req.headers["X-Signature"] == expected

"""The X-Signature algorithm against the two published, independently verified vectors."""

import pytest

from server.zai.signature import DEFAULT_KEY, sign

VECTORS = [
    (
        "123e4567-e89b-12d3-a456-426614174000", 1774500300000, "user-42",
        "Reply with exactly: hi-clean",
        "1fe0f2184a7b73b49fa475d9bcad3740109976f7e23959ec1e1d5635eda17591",
    ),
    (
        "d9fb3ca8-676f-46c3-90c7-ddc70a74e46d", 1771762969397,
        "d0d30815-b85a-4270-af63-b5346a9f3b13", "Reply with exactly: ok",
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

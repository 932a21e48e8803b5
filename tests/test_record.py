"""The re-recording script works end to end (against the fake, offline) and scrubs tokens."""

import yaml

from scripts.record_cassettes import FAKE_TOKEN, record
from tests.fake_upstream import FakeUpstream
from tests.recorded import sse_body


async def test_record_against_a_fake_upstream(tmp_path, monkeypatch):
    fake = FakeUpstream("home", "guest_auth", "stream_glm5_plain_thinking")
    base = await fake.start()
    monkeypatch.setenv("ZAI_BASE_URL", base)
    try:
        await record(tmp_path, "hi", "GLM-4.5-Thinking", None)
    finally:
        await fake.close()
    guest_token = fake.requests[-1].query["token"]
    assert guest_token != FAKE_TOKEN
    for file in tmp_path.glob("*.yaml"):
        text = file.read_text()
        assert guest_token not in text and guest_token.split(".")[1] not in text
        assert "authorization" not in text.lower()
    stream = yaml.safe_load((tmp_path / "stream_recorded.yaml").read_text())
    response = stream["interactions"][0]["response"]
    assert response["status"]["code"] == 200  # the fake verified the signature
    assert response["body"]["string"].encode() == sse_body("stream_glm5_plain_thinking")

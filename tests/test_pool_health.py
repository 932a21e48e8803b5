"""Reading configured upstream tokens (files with lines, commas, comments; env lists), and
tokens whose first check could not reach the upstream being checked again."""

import asyncio
import time

import openai
import pytest

from server.credentials.checks import configured_tokens, parse_tokens
from server.settings import load_settings
from tests.test_pool_gateway import ADMIN, HELLO, OK, TOKENS, admin

AUTHS = "/api/v1/auths/"


def test_parse_lines_commas_comments_and_duplicates():
    text = "# my tokens\ntok-a\n\ntok-b, tok-c  # work account\n tok-a ,tok-d\n#tok-e\n"
    assert parse_tokens(text) == ["tok-a", "tok-b", "tok-c", "tok-d"]


def test_file_and_env_together(tmp_path, monkeypatch):
    monkeypatch.delenv("ZAI_TOKENS", raising=False)
    file = tmp_path / "tokens.txt"
    file.write_text("tok-a\ntok-b,tok-c\n")
    settings = load_settings(
        _env_file=None, auth_token="k", auth_tokens_file=file, zai_tokens="tok-c, tok-z"
    )
    assert configured_tokens(settings) == ["tok-a", "tok-b", "tok-c", "tok-z"]


def test_tokens_a_header_cannot_carry_are_ignored():
    assert parse_tokens("tok-a\ntök-b, tok c\n\x00x,tok-d") == ["tok-a", "tok-d"]


def pooled(gateway, **settings):
    """A gateway with a pool (filled through the admin API) and a 0.1 s upkeep beat."""
    return gateway(
        "home",
        "guest_auth_user_role",
        OK,
        **{"admin_token": ADMIN, "anonymous_mode": False, "instance_ttl": 0.3, **settings},
    )


async def active_within(gw, seconds: float, why: str) -> None:
    deadline = time.monotonic() + seconds
    while (await gw.services.pool.status())[0].state == "pending":
        assert time.monotonic() < deadline, why
        await asyncio.sleep(0.1)


async def test_a_token_whose_first_check_failed_is_rechecked_with_backoff(gateway):
    gw = await pooled(gateway)
    gw.fake.fail_paths[AUTHS] = 503  # the upstream is down when the token arrives
    code, status = await admin(gw, "POST", "/v1/token-pool/update", [TOKENS[0]])
    assert code == 200 and [r["state"] for r in status["tokens"]] == ["pending"]
    # Still ready (every replica shares this pool), and it says it can serve nothing.
    code, ready = await admin(gw, "GET", "/readyz", token=None)
    assert code == 200 and ready["serves"] == "nothing", ready
    assert ready["tokens"] == {"active": 0, "cooling": 0, "pending": 1, "dead": 0}
    assert "1 pending" in ready["detail"] and "ANONYMOUS_MODE is off" in ready["detail"]
    async with gw.openai() as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
        assert info.value.status_code == 503 and "none validated yet" in info.value.message
        await asyncio.sleep(2.0)
        checks = sum(1 for r in gw.fake.requests if r.path == AUTHS)
        # re-checked, backing off: 0.1, 0.2, 0.4, 0.8 s apart, not once per 0.1 s beat
        assert 3 <= checks <= 7, checks
        gw.fake.fail_paths.clear()  # the upstream is back
        await active_within(gw, 5, "still pending after the upstream came back")
        reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert reply.choices[0].finish_reason == "stop"
    assert [r.state for r in await gw.services.pool.status()] == ["active"]
    code, ready = await admin(gw, "GET", "/readyz", token=None)
    assert code == 200 and ready["serves"] == "pooled" and ready["tokens"]["active"] == 1


async def test_readiness_says_guests_stand_in_when_no_pooled_token_is_usable(gateway):
    gw = await pooled(gateway, anonymous_mode=True)
    gw.fake.fail_paths[AUTHS] = 503
    await admin(gw, "POST", "/v1/token-pool/update", [TOKENS[0]])
    code, ready = await admin(gw, "GET", "/readyz", token=None)
    assert code == 200 and ready["serves"] == "guests", ready
    assert ready["detail"].startswith("no pooled upstream token is usable (1 pending)")


async def test_a_pending_token_another_replica_left_is_checked_by_the_periodic_check(gateway):
    gw = await pooled(gateway, pool_health_interval=0.3)
    # Added to the shared pool by a replica that stopped before its check could run.
    await gw.services.pool.add([TOKENS[1]])
    await active_within(gw, 5, "a pending token nobody here added stayed pending")
    assert [r.state for r in await gw.services.pool.status()] == ["active"]

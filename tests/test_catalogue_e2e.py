"""The live model catalogue end to end (issue 15 item 3; PROTOCOL.md section 6.5).

The fake upstream serves a synthesized ``GET /api/models`` (tests/fake_catalogue.py), one list
per tier. Through the official SDKs: a model that exists only there is listed with its
capabilities and served; one marked inactive or hidden is not listed and gets a 404 naming
the models that exist; a model only the user tier lists is routed to pooled user tokens and
never to a guest; the lists are shared by replicas through Redis.
"""

import asyncio

import anthropic
import msgspec
import openai
import pytest

from tests.accounts import TOKENS
from tests.conftest import API_KEY
from tests.fake_catalogue import entry

OK = "stream_glm5_plain_thinking"
GUESTS = ("home", "guest_auth", OK)
HI = [{"role": "user", "content": "hi"}]


def new_model(gw, guest: bool = True) -> None:
    caps = {"think": True, "web_search": False, "reasoning_effort": True}
    gw.fake.models.append(entry("glm-6-preview", "GLM-6", guest, caps))


def row(gw, upstream: str) -> dict:
    return next(r for r in gw.fake.models if r["id"] == upstream)


def sent_model(gw) -> str:
    return msgspec.json.decode(gw.completions_seen()[-1].body)["model"]


async def test_a_model_only_the_upstream_lists_is_listed_and_served(gateway):
    gw = await gateway(*GUESTS)
    new_model(gw)
    async with gw.openai() as client:
        listed = {m.id: m for m in (await client.models.list()).data}
        assert {"GLM-6", "GLM-6-Thinking"} <= set(listed) and "GLM-6-Search" not in listed
        assert "GLM-4.5" in listed  # the static table stays
        caps = listed["GLM-6"].model_dump()["capabilities"]
        assert caps == {
            "vision": False,
            "thinking": True,
            "search": False,
            "reasoning_effort": ["high", "max"],
        }
        one = await client.models.retrieve("glm-6")
        assert one.id == "GLM-6"
        reply = await client.chat.completions.create(
            model="GLM-6-Thinking", messages=HI, reasoning_effort="xhigh"
        )
    assert reply.model == "GLM-6-Thinking" and reply.choices[0].message.content
    body = msgspec.json.decode(gw.completions_seen()[-1].body)
    assert body["model"] == "glm-6-preview" and body["features"]["reasoning_effort"] == "max"
    async with anthropic.AsyncAnthropic(
        base_url=gw.url, api_key=API_KEY, max_retries=0, timeout=20
    ) as claude:
        ids = [m.id async for m in claude.models.list()]
        message = await claude.messages.create(model="GLM-6", max_tokens=64, messages=HI)
    assert "GLM-6" in ids and message.content[-1].text
    assert sent_model(gw) == "glm-6-preview"


async def test_a_new_model_is_served_after_a_first_answer_without_listing(gateway):
    """The list is read with the token that served the first answer (no extra sign-in)."""
    gw = await gateway(*GUESTS)
    new_model(gw)
    async with gw.openai() as client:
        await client.chat.completions.create(model="GLM-4.7", messages=HI)
        for _ in range(100):  # the read runs in the background after the answer
            if gw.services.catalogue.table.find("GLM-6"):
                break
            await asyncio.sleep(0.02)
        reply = await client.chat.completions.create(model="GLM-6", messages=HI)
    assert reply.choices[0].message.content and sent_model(gw) == "glm-6-preview"
    signins = [r for r in gw.fake.requests if r.path == "/api/v1/auths/"]
    assert len(signins) == 2  # one guest per answer, none for the list
    reads = [r for r in gw.fake.requests if r.path == "/api/models"]
    assert len(reads) == 1 and reads[0].headers["Authorization"].startswith("Bearer ")


@pytest.mark.parametrize("how", ["inactive", "hidden"])
async def test_a_model_the_upstream_retired_is_not_listed_and_404s(gateway, how):
    gw = await gateway(*GUESTS)
    info = row(gw, "0727-106B-API")["info"]  # GLM-4.5-Air, in the static table
    if how == "inactive":
        info["is_active"] = False
    else:
        info["meta"]["hidden"] = True
    async with gw.openai() as client:
        listed = [m.id for m in (await client.models.list()).data]
        assert not [name for name in listed if name.startswith("GLM-4.5-Air")]
        with pytest.raises(openai.NotFoundError) as err:
            await client.chat.completions.create(model="GLM-4.5-Air", messages=HI)
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("GLM-4.5-Air")
    message = err.value.body["message"]
    assert "'GLM-4.5-Air' does not exist" in message and "available models: GLM-4.5," in message
    assert "GLM-4.5-Air," not in message
    assert gw.completions_seen() == []


async def test_a_user_only_model_goes_to_user_tokens_never_to_a_guest(gateway):
    gw = await gateway(
        *GUESTS, zai_tokens=",".join(TOKENS), anonymous_mode=True, upstream_retries=0
    )
    for token in TOKENS:  # the fake now knows them as user accounts
        gw.fake.accounts[token] = {"id": "", "role": "user", "name": "U", "token": token}
    await gw.services.health_check()
    new_model(gw, guest=False)
    async with gw.openai() as client:
        listed = {m.id: m.model_dump() for m in (await client.models.list()).data}
        assert listed["GLM-6"]["requires_user_token"] is True
        assert listed["GLM-4.7"]["requires_user_token"] is False
        reply = await client.chat.completions.create(model="GLM-6", messages=HI)
        assert reply.choices[0].message.content
        assert gw.completions_seen()[-1].query["token"] in TOKENS
        for token in TOKENS:  # every pooled token is rate-limited: guests stand in where they may
            gw.fake.fail_tokens[token] = 429
        for _ in TOKENS:
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(model="GLM-4.7", messages=HI)
        served = await client.chat.completions.create(model="GLM-4.7", messages=HI)
        assert gw.completions_seen()[-1].query["token"] not in TOKENS
        with pytest.raises(openai.APIStatusError) as err:
            await client.chat.completions.create(model="GLM-6", messages=HI)
    assert served.choices[0].message.content
    assert err.value.status_code == 429 and "needs a user token" in err.value.message
    assert gw.completions_seen()[-1].query["token"] not in TOKENS  # GLM-6 sent nowhere


async def test_replicas_share_the_lists_through_redis(gateway, real_redis_server):
    first = await gateway(*GUESTS, redis_url=real_redis_server.url, redis_prefix="cat1:")
    new_model(first)
    async with first.openai() as client:
        assert "GLM-6" in [m.id for m in (await client.models.list()).data]
    second = await gateway(*GUESTS, redis_url=real_redis_server.url, redis_prefix="cat1:")
    second.fake.models = []  # this replica's upstream would list nothing: Redis answers
    async with second.openai() as client:
        assert "GLM-6" in [m.id for m in (await client.models.list()).data]
    assert [r for r in second.fake.requests if r.path == "/api/models"] == []


async def test_static_mode_ignores_the_upstream_list(gateway):
    gw = await gateway(*GUESTS, zai_models="static")
    new_model(gw)
    async with gw.openai() as client:
        listed = [m.id for m in (await client.models.list()).data]
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="GLM-6", messages=HI)
    assert "GLM-6" not in listed and "GLM-4.5-Air" in listed
    assert [r for r in gw.fake.requests if r.path == "/api/models"] == []

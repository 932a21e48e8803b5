"""Continued chats (issue 15 item 2; PROTOCOL.md section 6.4): ``ZAI_CHATS=continue``.

Through the official ``openai`` SDK against the fake upstream in conversation mode (it keeps
each chat's history, checks ``current_user_message_parent_id`` and reports what it already
held as ``cached_tokens``): a 3-turn conversation named by ``X-Zai-Conversation`` sends only
the new turn each time, in one chat, and the usage reports the cached tokens; with
``ZAI_CREATE_CHATS`` the chat continued is the one created first (``POST /api/v1/chats/new``).
"""

import asyncio
import json

import openai
import pytest

from tests.accounts import TOKENS, pool_gateway
from tests.test_chats import forgotten

CONV = {"X-Zai-Conversation": "test-conversation-1"}


async def test_three_turns_send_only_the_new_turn(gateway):
    gw = await gateway(
        "home",
        "guest_auth_user_role",
        zai_tokens=",".join(TOKENS),
        anonymous_mode=False,
        zai_chats="continue",
    )
    gw.fake.converse = True
    history: list[dict] = []
    cached = []
    async with gw.openai() as client:
        for n in range(1, 4):
            history.append({"role": "user", "content": f"question number {n}"})
            reply = await client.chat.completions.create(
                model="GLM-5.1", messages=history, extra_headers=CONV
            )
            answer = reply.choices[0].message.content
            assert answer == f"Turn {n}."
            history.append({"role": "assistant", "content": answer})
            details = reply.usage.prompt_tokens_details
            cached.append(details.cached_tokens if details else 0)
    seen = [json.loads(s.body) for s in gw.completions_seen()]
    assert len(seen) == 3
    assert len({body["chat_id"] for body in seen}) == 1  # one upstream chat
    assert seen[0].get("current_user_message_parent_id") is None
    for n, body in enumerate(seen[1:], start=2):
        users = [m for m in body["messages"] if m["role"] == "user"]
        assert len(users) == 1 and f"question number {n}" in str(users[0]["content"])
        assert body["current_user_message_parent_id"] == seen[n - 2]["id"]
    assert cached[0] == 0 and 0 < cached[1] < cached[2]


def pooled(**more):
    return dict(zai_tokens=",".join(TOKENS), anonymous_mode=False, zai_chats="continue", **more)


async def test_anthropic_metadata_user_id_and_cache_read_tokens(gateway):
    gw = await gateway("home", "guest_auth_user_role", **pooled())
    gw.fake.converse = True
    history: list[dict] = []
    cached = []
    async with gw.anthropic() as client:
        for n in range(1, 4):
            history.append({"role": "user", "content": f"question number {n}"})
            reply = await client.messages.create(
                model="GLM-5.1",
                max_tokens=100,
                messages=history,
                metadata={"user_id": "anthropic-user-7"},
            )
            answer = reply.content[-1].text
            assert answer == f"Turn {n}."
            history.append({"role": "assistant", "content": answer})
            cached.append(reply.usage.cache_read_input_tokens or 0)
    seen = [json.loads(s.body) for s in gw.completions_seen()]
    assert len({body["chat_id"] for body in seen}) == 1
    assert [len(body["messages"]) for body in seen[1:]] == [1, 1]
    assert cached[0] == 0 and 0 < cached[1] < cached[2]


async def test_mapping_gone_means_full_history_on_a_fresh_chat(gateway):
    gw = await gateway("home", "guest_auth_user_role", **pooled())
    gw.fake.converse = True
    async with gw.openai() as client:
        history = await _first_turn(gw, client)
        history.append({"role": "user", "content": "second question"})
        store = gw.services.continuations.store
        keys = [k async for k in store.redis.scan_iter(match="*conv:*")]
        assert keys, "the mapping was not stored"
        await store.redis.delete(*keys)
        reply = await client.chat.completions.create(
            model="GLM-5.1", messages=history, extra_headers=CONV
        )
        assert reply.choices[0].message.content == "Turn 1."  # a fresh chat
    first, second = [json.loads(s.body) for s in gw.completions_seen()]
    assert second["chat_id"] != first["chat_id"]
    assert second.get("current_user_message_parent_id") is None
    assert "first question" in json.dumps(second["messages"])


async def test_two_concurrent_turns_wait_or_get_a_clear_409(gateway):
    gw = await gateway("home", "guest_auth_user_role", **pooled(zai_conversation_wait=0.2))
    gw.fake.converse = True
    gw.fake.turn_time = 1.5
    history = [{"role": "user", "content": "first question"}]
    async with gw.openai() as client:
        client = client.with_options(max_retries=0)
        first = asyncio.ensure_future(
            client.chat.completions.create(model="GLM-5.1", messages=history, extra_headers=CONV)
        )
        await asyncio.sleep(0.3)
        with pytest.raises(openai.ConflictError) as caught:
            await client.chat.completions.create(
                model="GLM-5.1", messages=history, extra_headers=CONV
            )
        assert "another turn of this conversation is still being answered" in str(caught.value)
        assert (await first).choices[0].message.content == "Turn 1."


async def test_a_second_turn_waits_for_the_first(gateway):
    gw = await gateway("home", "guest_auth_user_role", **pooled(zai_conversation_wait=10))
    gw.fake.converse = True
    gw.fake.turn_time = 0.5
    history = [{"role": "user", "content": "first question"}]
    async with gw.openai() as client:
        client = client.with_options(max_retries=0)
        first = asyncio.ensure_future(
            client.chat.completions.create(model="GLM-5.1", messages=history, extra_headers=CONV)
        )
        await asyncio.sleep(0.2)
        later = [*history, {"role": "assistant", "content": "Turn 1."}]
        later.append({"role": "user", "content": "second question"})
        second = await client.chat.completions.create(
            model="GLM-5.1", messages=later, extra_headers=CONV
        )
        assert (await first).choices[0].message.content == "Turn 1."
        assert second.choices[0].message.content == "Turn 2."  # continued after the first


async def test_the_openai_user_field_names_the_conversation(gateway):
    """No header: OpenAI's ``user`` names the conversation."""
    gw = await pool_gateway(gateway, zai_chats="continue")
    gw.fake.converse = True
    msgs = [{"role": "user", "content": "one two three"}]
    usages = []
    async with gw.openai() as client:
        for i in range(3):
            r = await client.chat.completions.create(model="GLM-4.7", messages=msgs, user="conv-1")
            usages.append(r.usage.prompt_tokens_details.cached_tokens)
            answer = r.choices[0].message.content
            msgs += [
                {"role": "assistant", "content": answer},
                {"role": "user", "content": f"more {i}"},
            ]
    bodies = [json.loads(s.body) for s in gw.completions_seen()]
    assert [len(b["messages"]) for b in bodies] == [1, 1, 1]
    assert bodies[1]["current_user_message_parent_id"] == bodies[0]["id"]
    assert usages[2] > usages[1] > 0


async def _first_turn(gw, client) -> list[dict]:
    history = [{"role": "user", "content": "first question"}]
    reply = await client.chat.completions.create(
        model="GLM-5.1", messages=history, extra_headers=CONV
    )
    history.append({"role": "assistant", "content": reply.choices[0].message.content})
    await gw.services.pool.batch.flush()  # the mapping is saved write-behind
    return history


async def test_an_edited_history_starts_a_fresh_chat(gateway):
    """The client changed an earlier turn (edited, regenerated): what the upstream chat holds is
    no longer the conversation, so it is sent whole on a fresh chat."""
    gw = await gateway("home", "guest_auth_user_role", **pooled())
    gw.fake.converse = True
    async with gw.openai() as client:
        history = await _first_turn(gw, client)
        history[0] = {"role": "user", "content": "an edited first question"}
        history.append({"role": "user", "content": "second question"})
        reply = await client.chat.completions.create(
            model="GLM-5.1", messages=history, extra_headers=CONV
        )
        assert reply.choices[0].message.content == "Turn 1."  # a chat of its own
    first, second = [json.loads(s.body) for s in gw.completions_seen()]
    assert second["chat_id"] != first["chat_id"]
    assert second.get("current_user_message_parent_id") is None
    assert "an edited first question" in json.dumps(second["messages"])


async def test_the_upstreams_session_busy_is_retried_then_a_clear_409(gateway):
    gw = await gateway("home", "guest_auth_user_role", **pooled())
    gw.fake.converse = True
    async with gw.openai() as client:
        client = client.with_options(max_retries=0)
        history = await _first_turn(gw, client)
        (chat_id,) = gw.fake.threads
        gw.fake.busy_chats.add(chat_id)  # the upstream still runs a turn of this chat
        history.append({"role": "user", "content": "second question"})
        with pytest.raises(openai.ConflictError) as caught:
            await client.chat.completions.create(
                model="GLM-5.1", messages=history, extra_headers=CONV
            )
        assert caught.value.response.headers["x-should-retry"] == "true"
        tries = [json.loads(s.body) for s in gw.completions_seen()][1:]
        assert len(tries) >= 2 and {t["chat_id"] for t in tries} == {chat_id}  # retried there
        gw.fake.busy_chats.clear()  # the upstream's turn ended: the conversation goes on
        reply = await client.chat.completions.create(
            model="GLM-5.1", messages=history, extra_headers=CONV
        )
        assert reply.choices[0].message.content == "Turn 2."


async def test_a_conversation_nobody_continues_has_its_chat_deleted_upstream(gateway):
    # Short lives for the test: the mapping 1 s after its turn, a heartbeat every 0.5 s
    # (so a chat is deleted 2 x 1.5 s after its mapping expired).
    gw = await gateway(
        "home", "guest_auth_user_role", **pooled(zai_conversation_ttl=1, instance_ttl=1.5)
    )
    gw.fake.converse = True
    async with gw.openai() as client:
        await _first_turn(gw, client)
    chat_id = json.loads(gw.completions_seen()[-1].body)["chat_id"]
    assert chat_id in gw.fake.chats and chat_id not in gw.fake.deleted  # kept for a next turn
    deadline = asyncio.get_running_loop().time() + 15
    while chat_id not in gw.fake.deleted:
        assert asyncio.get_running_loop().time() < deadline, "the chat was never deleted"
        await asyncio.sleep(0.2)
    await forgotten(gw, deadline - asyncio.get_running_loop().time())


async def test_a_created_chat_is_the_one_continued(gateway):
    """``ZAI_CREATE_CHATS`` against an upstream that requires it: the first turn creates the
    chat (``POST /api/v1/chats/new``), the later ones continue that chat and create none; a
    history that no longer extends the stored one creates a fresh chat again."""
    gw = await gateway("home", "guest_auth_user_role", **pooled(zai_create_chats=True))
    gw.fake.converse = True
    gw.fake.create_required = True
    history: list[dict] = []
    async with gw.openai() as client:
        for n in range(1, 4):
            history.append({"role": "user", "content": f"question number {n}"})
            reply = await client.chat.completions.create(
                model="GLM-5.1", messages=history, extra_headers=CONV
            )
            assert reply.choices[0].message.content == f"Turn {n}."
            history.append({"role": "assistant", "content": f"Turn {n}."})
            await gw.services.pool.batch.flush()  # the mapping is saved write-behind
        (created,) = gw.fake.created
        assert {json.loads(s.body)["chat_id"] for s in gw.completions_seen()} == {created}
        history[0] = {"role": "user", "content": "an edited first question"}
        history.append({"role": "user", "content": "another question"})
        reply = await client.chat.completions.create(
            model="GLM-5.1", messages=history, extra_headers=CONV
        )
        assert reply.choices[0].message.content == "Turn 1."  # a fresh chat, created too
    assert len(gw.fake.created) == 2
    assert json.loads(gw.completions_seen()[-1].body)["chat_id"] in set(gw.fake.created) - {created}

"""ZAI_CHATS=continue (issue 15 item 2): a conversation goes on in one upstream chat.

First test only (more listed in /work/notes/continue.md): three turns through the openai SDK
with `user` send one new message each, under the previous answer's id, and cached_tokens grow.
"""

import json

from tests.accounts import pool_gateway


async def test_three_turns_send_only_the_new_turn(gateway):
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

"""Continued chats (``ZAI_CHATS=continue``): a client conversation goes on in one upstream chat.

Owns ``Continuations`` and ``Turn``'s plan for one attempt. A conversation is named by the
client (the ``X-Zai-Conversation`` header, else OpenAI's ``user`` / Anthropic's
``metadata.user_id``) and keyed by a hash of that name and the caller's key id. The pool's pick
(``state.pool``) takes the conversation's turn and leases the token its chat belongs to,
answering the chat's ``Mapping``; ``plan`` then decides what to send. The upstream keeps the
history (PROTOCOL.md section 6.4), so when the client's history (as rendered for the upstream)
*extends* the stored one, i.e. its first ``count`` turns hash to the stored ``prefix``, the next
turn is the assistant's answer (its text hashing to the stored ``answer`` where that can be
compared) and something follows it, only the turns after that answer are sent, in the same
chat, under ``current_user_message_parent_id`` = the answer's message id. Anything else (no
mapping, the token gone, cooling or at its cap, an edited or regenerated history, a changed
tool list: it is part of the rendered system turn) starts a fresh chat with the whole history
on whichever token the pick gave, and the mapping is replaced once that turn succeeds. Turns
the upstream refused on a continued chat are retried on a fresh chat. Continued chats are
not deleted: the upstream keeps the conversation for the next turn.
"""

import hashlib
import secrets
from dataclasses import dataclass, replace

from server.core.chat import Conversation, Turn
from server.ids import uuid4_text
from server.zai.identity import Credential
from state.conversations import ConversationStore, Mapping, Thread
from state.keys import token_id

__all__ = ["Continuations", "Plan", "conversation_key", "history_digest"]


def conversation_key(caller: str, name: str) -> str:
    """The stored key of a client's conversation: never the raw name, and per caller (two
    API keys naming a conversation alike do not share a chat)."""
    return hashlib.sha256(f"{caller}\x00{name}".encode()).hexdigest()[:32]


def history_digest(turns: list[Turn]) -> str:
    """What identifies a history: each turn's role, text and images, in order."""
    digest = hashlib.sha256()
    for turn in turns:
        images = ",".join(image.digest or image.source[:200] for image in turn.images)
        digest.update(f"{turn.role}\x00{turn.text}\x00{images}\x1e".encode())
    return digest.hexdigest()[:32]


def _answer_digest(text: str) -> str:
    return hashlib.sha256(text.strip().encode()).hexdigest()[:32]


@dataclass(slots=True)
class Plan:
    """One attempt's chat: what is sent (``conv``), where (``chat_id``, ``parent_id`` None
    for a fresh chat) and the id the answer's message gets (``message_id``)."""

    conv: Conversation
    history: list[Turn]  # the whole rendered history, for the mapping after it
    chat_id: str
    parent_id: str | None
    message_id: str
    checkable: bool  # whether the answer's text can be compared with the client's copy

    @property
    def continued(self) -> bool:
        return self.parent_id is not None


class Continuations:
    def __init__(self, store: ConversationStore, wait: float) -> None:
        self.store = store
        self.wait = wait  # seconds a turn waits for the conversation's previous one

    def __repr__(self) -> str:
        return f"<Continuations {self.store!r}>"

    def thread(self, conv: Conversation) -> Thread | None:
        """This request's claim on its conversation, if it names one."""
        if not conv.thread:
            return None
        return Thread(conv.thread, f"{conv.request_id}:{secrets.token_hex(6)}")

    def plan(self, conv: Conversation, cred: Credential, fresh: bool = False) -> Plan:
        turns, found = conv.turns, None if fresh else cred.mapping
        # A stop sequence cuts what the client sees short of what the upstream keeps, and
        # tool calls come back re-rendered: only a plain answer's text can be compared.
        checkable = not conv.stop and not conv.tools
        if found is not None and _extends(turns, found):
            sent = replace(conv, turns=turns[found.count + 1 :])
            return Plan(sent, turns, found.chat_id, found.parent_id, uuid4_text(), checkable)
        return Plan(conv, turns, uuid4_text(), None, uuid4_text(), checkable)

    def done(self, thread: Thread, cred: Credential, plan: Plan, answer: str) -> None:
        """The turn went well: the next continues from its answer, on the same token."""
        mapping = Mapping(
            plan.chat_id,
            plan.message_id,
            len(plan.history),
            history_digest(plan.history),
            _answer_digest(answer) if plan.checkable else "",
        )
        self.store.save(thread, token_id(cred.token), mapping)

    def end(self, thread: Thread) -> None:
        self.store.let_go(thread)


def _extends(turns: list[Turn], found: Mapping) -> bool:
    n = found.count
    return (
        n > 0
        and len(turns) > n + 1
        and turns[n].role == "assistant"
        and turns[-1].role != "assistant"  # a prefilled answer: the upstream cannot take it
        and all(turn.role != "system" for turn in turns[n + 1 :])
        and history_digest(turns[:n]) == found.prefix
        and (not found.answer or _answer_digest(turns[n].text) == found.answer)
    )

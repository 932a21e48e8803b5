"""A cassette replay server that stands in for chat.z.ai, over real sockets.

Owns playing the recorded upstream (``cassettes/*.yaml``, vcrpy's format, loaded with vcrpy) on
127.0.0.1: requests match on method + URL path (the query is ignored); among the interactions
matching a request the first one not yet played answers (cassettes in the order given) and, once
all were played, the last one repeats. SSE bodies are written one event (or, with
``split="random"``, one random 1..64-byte chunk) at a time with a flush each, so clients see real
chunking and real disconnects, counted in ``streams_completed`` / ``streams_aborted``. With
``verify=True`` completion requests are first checked the way the real upstream checks them
(query fields, bearer token, front-end version of the home cassette, ``X-Signature``) and
against the synthesized ``GET /api/models`` catalogue it serves (``models``, from
``tests/fake_catalogue.py``; a guest token sees and may use only the guest rows, and
``features.reasoning_effort`` is refused where the capabilities lack it). Note that
tornado 6.6's client coalesces chunks that are already buffered, so splits only reach a tornado
client as separate reads when ``pace`` > 0. Usable in-process (``await fake.start()`` -> base
URL) or standalone: ``python -m tests.fake_upstream --port 9000 --pace 0.05 home guest_auth
stream_glm5_plain_thinking``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import hashlib
import json
import logging
import random
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPHeaders
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler
from vcr.cassette import Cassette
from vcr.errors import UnhandledHTTPRequestError
from vcr.matchers import method, path
from vcr.record_mode import RecordMode
from vcr.request import Request

from scripts.upstream_checks import BAD_TOKEN, refusal
from server.zai.signature import DEFAULT_KEY
from tests.fake_catalogue import catalogue

CASSETTES = Path(__file__).resolve().parent.parent / "cassettes"
COMPLETIONS = "/api/v2/chat/completions"
CHATS = "/api/v1/chats/"
FILES = "/api/v1/files/"
DROPPED = {"content-length", "transfer-encoding", "content-encoding", "connection", "keep-alive"}
# How long a cut connection stays open after its last piece: the upstream dies a moment after
# its last frame, and the client has read what was sent before the reset.
CUT_DELAY = 0.05
WAF_PAGE = (
    b'<!doctypehtml><html lang="zh-cn"><title>403</title><body>'
    b"<img src=https://errors.aliyun.com/images/TB1TpamHpXXXXaJXXXXeB7nYVXX-104-162.png>"
    b"Sorry, your request has been blocked as it may cause potential threats</body></html>"
)


@dataclass
class Seen:
    """One request as received; ``headers`` is tornado's case-insensitive HTTPHeaders."""

    method: str
    path: str
    query: dict[str, str]
    headers: HTTPHeaders
    body: bytes
    connection: int = 0  # which client connection it came on (id of its stream)
    source: str = ""  # the client's address: a proxy's outgoing one when it came through one
    at: float = 0.0  # time.monotonic() when its headers arrived


class FakeUpstream:
    def __init__(
        self,
        *cassettes: str,
        pace: float = 0.0,
        split: str = "event",
        verify: bool = True,
        seed: int = 0,
        cut_after: int | None = None,
        stall_after: int | None = None,
        stall_headers: bool = False,
    ) -> None:
        if split not in ("event", "random"):
            raise ValueError(f"split must be 'event' or 'random', not {split!r}")
        self.pace, self.split, self.verify = pace, split, verify
        self.cut_after = cut_after  # drop the connection after this many SSE pieces
        self.stall_after = stall_after  # go silent (connection open) after this many pieces
        self.stall_headers = stall_headers  # completions: never answer at all
        self.fail_tokens: dict[str, int] = {}  # token -> HTTP status its completions get
        # token -> in-band error code its completions get on a 200 stream (PROTOCOL.md section
        # 6.7: 429, "MODEL_CONCURRENCY_LIMIT", "RATE_LIMIT_EXCEEDED", "TOO_MANY_REQUESTS")
        self.limit_tokens: dict[str, int | str] = {}
        self.fail_paths: dict[str, int] = {}  # path -> HTTP status (e.g. the token check)
        self.stall_paths: set[str] = set()  # paths that never answer (connection kept open)
        # The key completions must be signed with (the page's moves with its releases).
        self.signature_key = DEFAULT_KEY
        # Endpoints the upstream moved: old path -> new path. The old one answers 404; the
        # new one is served as the old was.
        self.moved: dict[str, str] = {}
        # Strict captcha mode (PROTOCOL.md section 6.2): when a set, /api/config says
        # enable_captcha and a completion needs one of these params, each good once.
        self.captcha_valid: set[str] | None = None
        self.captcha_used: list[str] = []
        # WAF mode (PROTOCOL.md section 6.3): POSTs to the completions path from these source
        # addresses get the Aliyun block page (405 HTML); everything else still answers.
        self.waf_sources: set[str] = set()
        # SSE bodies the next completions get instead of a cassette's, each written in one
        # piece (a long answer arriving faster than it is read).
        self.answers: list[bytes] = []
        self._random = random.Random(seed)
        self._cassettes = [_load(name) for name in cassettes]
        self._played: set[int] = set()
        self.requests: list[Seen] = []
        self.streams_completed = 0
        self.streams_aborted = 0
        self.in_flight: collections.Counter[str] = collections.Counter()  # token -> completions
        self.most_in_flight: collections.Counter[str] = collections.Counter()  # its high mark
        self.fe_version = self._home_fe_version()
        # GET /api/models (synthesized, tests/fake_catalogue.py); with verify=True the
        # completion's model and features are checked against it as the upstream would.
        self.models: list[dict] = catalogue()
        self.guest_tokens = self._guest_tokens()
        # token -> what GET /api/v1/auths/ with that bearer answers (a user account; its
        # "token" may differ: a rotated token, PROTOCOL.md section 6.8). Others: cassettes.
        self.accounts: dict[str, dict] = {}
        # Strict roles (PROTOCOL.md section 6.7, one source): the v2 endpoint takes only
        # role "user" messages and answers others with an in-band INTERNAL_ERROR.
        self.strict_roles = False
        # Chats the upstream keeps (PROTOCOL.md section 6.4): each accepted completion's
        # chat_id -> its owner's token, until DELETE /api/v1/chats/{id} by that owner
        # (true; anything else: 404 "We could not find..."). ``delete_failures``: that many
        # deletes answer 500 first.
        self.chats: dict[str, str] = {}
        # Conversation mode (PROTOCOL.md section 6.4): with ``converse`` set, completions are
        # answered by the fake itself ("Turn <n>." after ``turn_time`` s), keeping each chat's
        # history server-side (``threads``): a turn with current_user_message_parent_id must
        # name the last assistant message the chat issued (the body's ``id`` of the turn before)
        # and come from the chat's owner, else 400; a turn while one is in flight on the same
        # chat (or a chat in ``busy_chats``) gets HTTP 409 SESSION_BUSY; usage reports the
        # history it already held as cached_tokens (a word is a token).
        self.converse = False
        self.turn_time = 0.0
        self.threads: dict[str, Thread] = {}
        self.busy_chats: set[str] = set()
        self.deleted: list[str] = []
        self.delete_failures = 0
        # Chat creation (PROTOCOL.md section 6.4): POST /api/v1/chats/new with the page's body
        # makes a chat (kept in ``chats``) and answers its id. With ``create_required`` a
        # completion starting a chat (no current_user_message_parent_id) must name one made so
        # by the same token, else 404 "We could not find...", an upstream refusing chats it
        # never made.
        self.create_required = False
        self.created: dict[str, str] = {}  # chat id -> the token that made it
        # Files (PROTOCOL.md section 6.9): POST /api/v1/files/ (multipart, user tokens only;
        # a guest gets 401) answers a file object shaped like the cassette's upload (only a
        # cassette holding one teaches the fake the endpoint); id -> (owner token, bytes).
        # With verify=True a completion's files and image parts must name files its token
        # uploaded, else 400.
        self.files: dict[str, tuple[str, bytes]] = {}
        self.base_url: str | None = None
        self._server: HTTPServer | None = None

    def _home_fe_version(self) -> str | None:
        for cassette in self._cassettes:
            for request, response in zip(cassette.requests, cassette.responses, strict=True):
                found = re.search(rb"prod-fe-[0-9.]+", response["body"]["string"] or b"")
                if request.method == "GET" and request.path == "/" and found:
                    return found.group().decode().rstrip(".")
        return None

    def _guest_tokens(self) -> set[str]:
        """The tokens the cassettes hand out as guests (role guest); any other is a user's."""
        found = set()
        for cassette in self._cassettes:
            for response in cassette.responses:
                try:
                    body = json.loads(response["body"]["string"] or b"")
                except ValueError:
                    continue
                if isinstance(body, dict) and body.get("role") == "guest" and body.get("token"):
                    found.add(body["token"])
        return found

    def model_list(self, token: str) -> dict:
        """What ``GET /api/models`` answers this token: a guest sees the guest rows only."""
        guest = token in self.guest_tokens
        rows = [
            {k: v for k, v in row.items() if k != "guest"}
            for row in self.models
            if row.get("guest", True) or not guest
        ]
        return {"data": rows}

    def _feature_refusal(self, seen: Seen) -> bytes | None:
        """The in-band answer to a completion the catalogue says cannot work, else None:
        a guest asking a user-only model (403), ``features.reasoning_effort`` that is not
        high/max, sent without thinking or to a model whose capabilities lack it (the real
        upstream misbehaves; here an INTERNAL_ERROR)."""
        if not self.verify or seen.method != "POST" or seen.path != COMPLETIONS:
            return None
        try:
            body = json.loads(seen.body)
            model, features = body["model"], body.get("features") or {}
        except (ValueError, KeyError, TypeError):
            return None
        roles = {m.get("role") for m in body.get("messages") or [] if isinstance(m, dict)}
        if self.strict_roles and roles - {"user"}:
            detail = f"only user messages are accepted, got {sorted(map(str, roles))}"
            return _inband({"code": "INTERNAL_ERROR", "detail": detail})
        row = next((r for r in self.models if r["id"] == model), None)
        guest = seen.query.get("token") in self.guest_tokens
        if row is not None and guest and not row.get("guest", True):
            return _inband({"code": 403, "detail": "Model not available for current user level"})
        if "reasoning_effort" in features:
            caps = (row or {}).get("info", {}).get("meta", {}).get("capabilities", {})
            effort = features["reasoning_effort"]
            if (
                effort not in ("high", "max")
                or features.get("enable_thinking") is not True
                or caps.get("reasoning_effort") is not True
            ):
                detail = f"reasoning_effort {effort!r} is not accepted for model {model}"
                return _inband({"code": "INTERNAL_ERROR", "detail": detail})
        return None

    def upload_template(self) -> dict | None:
        """The file object a cassette recorded for an upload, if one did."""
        for cassette in self._cassettes:
            for request, response in zip(cassette.requests, cassette.responses, strict=True):
                if request.method == "POST" and request.path == FILES:
                    return json.loads(response["body"]["string"])
        return None

    def upload(self, token: str, parts: list) -> dict:
        if not token or token in self.guest_tokens:
            raise _Status(401, BAD_TOKEN)
        if len(parts) != 1:
            raise _Status(400, {"detail": "expected one multipart field 'file'"})
        part = parts[0]
        file = json.loads(json.dumps(self.upload_template()))
        file_id = str(uuid.uuid4())
        file.update(id=file_id, filename=part.filename, created_at=int(time.time()))
        file["hash"] = hashlib.sha256(part.body).hexdigest()
        file["meta"].update(name=part.filename, content_type=part.content_type)
        file["meta"]["size"] = len(part.body)
        file["meta"]["cdn_url"] = f"https://cdn.example/files/{file_id}.png"
        self.files[file_id] = (token, part.body)
        return file

    def _file_refusal(self, seen: Seen) -> tuple[int, dict] | None:
        """A completion naming a file its token did not upload: 400, as a test signal."""
        if not self.verify or seen.method != "POST" or seen.path != COMPLETIONS:
            return None
        try:
            body = json.loads(seen.body)
        except ValueError:
            return None
        named = [entry.get("id") for entry in body.get("files") or []]
        for message in body.get("messages") or []:
            content = message.get("content")
            if isinstance(content, list):
                named += [p["image_url"]["url"] for p in content if p.get("type") == "image_url"]
        token = seen.query.get("token", "")
        for file_id in named:
            if self.files.get(file_id, ("",))[0] != token:
                return 400, {"detail": f"file {file_id} not found for this user"}
        return None

    def keep_chat(self, seen: Seen) -> None:
        try:
            chat_id = json.loads(seen.body).get("chat_id")
        except (ValueError, AttributeError):
            return
        if isinstance(chat_id, str) and chat_id:
            self.chats.setdefault(chat_id, seen.query.get("token", ""))

    def delete_chat(self, chat_id: str, token: str) -> object:
        if self.delete_failures > 0:
            self.delete_failures -= 1
            raise _Status(500, {"detail": "Internal Server Error"})
        if self.chats.get(chat_id) != token or not token:
            raise _Status(404, {"detail": "We could not find what you're looking for :/"})
        del self.chats[chat_id]
        self.deleted.append(chat_id)
        return True

    def _pick(self, request: Request) -> dict | None:
        candidates = []
        for cassette in self._cassettes:
            try:
                candidates += cassette.responses_of(request)
            except UnhandledHTTPRequestError:
                continue
        if not candidates:
            return None
        chosen = next((r for r in candidates if id(r) not in self._played), candidates[-1])
        self._played.add(id(chosen))
        return chosen

    def _reject(self, seen: Seen) -> tuple[int, dict] | None:
        """The real upstream's checks of a completion request, or None when it passes."""
        if not self.verify or seen.method != "POST" or seen.path != COMPLETIONS:
            return None
        refused = refusal(
            seen.query,
            seen.headers.get("Authorization"),
            seen.headers.get("X-FE-Version"),
            seen.headers.get("X-Signature"),
            seen.body,
            self.fe_version,
            self.signature_key,
        )
        if refused:
            return refused
        failing = self.fail_tokens.get(seen.query["token"])
        if failing:
            return failing, {"detail": f"failing on purpose for this token (HTTP {failing})"}
        return self._file_refusal(seen) or self._chat_refusal(seen)

    def create_chat(self, token: str, body: bytes) -> dict:
        try:
            chat = json.loads(body)["chat"]
            uid = chat["history"]["currentId"]
            first = chat["history"]["messages"][uid]
            ok = first["role"] == "user" and first["parentId"] is None and chat["models"]
        except (ValueError, KeyError, TypeError):
            ok = False
        if not token:
            raise _Status(401, BAD_TOKEN)
        if not ok:
            raise _Status(400, {"detail": "not a chat the page would create"})
        chat_id = str(uuid.uuid4())
        self.created[chat_id] = token
        self.chats[chat_id] = token
        return {**chat, "id": chat_id, "user_id": "u", "created_at": int(time.time())}

    def _chat_refusal(self, seen: Seen) -> tuple[int, dict] | None:
        if not self.create_required:
            return None
        try:
            body = json.loads(seen.body)
        except ValueError:
            return None
        if body.get("current_user_message_parent_id") is not None:
            return None  # a continued chat: conversation mode checks it
        if self.created.get(body.get("chat_id")) != seen.query.get("token"):
            return 404, {"detail": "We could not find what you're looking for :/"}
        return None

    def _limit_refusal(self, seen: Seen) -> bytes | None:
        """The in-band rate-limit answer for a token in ``limit_tokens``, else None."""
        if seen.method != "POST" or seen.path != COMPLETIONS:
            return None
        code = self.limit_tokens.get(seen.query.get("token", ""))
        if code is None:
            return None
        detail = (
            "Your current concurrent conversation limit has been reached, please try again later"
            if code == 429
            else "busy"
        )
        frame = {"type": "chat:completion", "data": {"content": "", "done": True}}
        frame["data"]["error"] = {"code": code, "detail": detail}
        return b"data: " + json.dumps(frame).encode() + b'\n\ndata: {"data":"[DONE]"}\n\n'

    def _captcha_refusal(self, seen: Seen) -> bytes | None:
        """The in-band SSE answer of the captcha gate, or None when the param is good."""
        if self.captcha_valid is None or seen.method != "POST" or seen.path != COMPLETIONS:
            return None
        try:
            param = json.loads(seen.body).get("captcha_verify_param")
        except (ValueError, AttributeError):
            param = None
        if not param:
            kind, code, detail = (
                "missing_param",
                "FRONTEND_CAPTCHA_REQUIRED",
                "Please refresh the page to update the app, then try again.",
            )
        elif param in self.captcha_used:
            kind, code, detail = "reused", "F018", "captcha verification failed"
        elif param not in self.captcha_valid:
            kind, code, detail = "invalid", "F019", "captcha verification failed"
        else:
            self.captcha_used.append(param)
            return None
        error = {"captcha_error_type": kind, "code": code, "detail": detail, "error_code": code}
        return _inband(error)

    def _pieces(self, body: bytes) -> list[bytes]:
        if self.split == "event":
            return re.findall(rb".*?\n\n|.+\Z", body, re.S)
        pieces, start = [], 0
        while start < len(body):
            size = self._random.randint(1, 64)
            pieces.append(body[start : start + size])
            start += size
        return pieces

    async def start(self, port: int = 0) -> str:
        sockets = bind_sockets(port, "127.0.0.1")
        self._server = HTTPServer(
            Application([(r".*", _Handler, {"fake": self})], log_function=lambda handler: None)
        )
        self._server.add_sockets(sockets)
        self.base_url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    async def close(self) -> None:
        """stop() and also drop the connections still open."""
        self.stop()
        if self._server is not None:
            await self._server.close_all_connections()
            self._server = None

    async def wait_aborted(self, n: int = 1, timeout: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while self.streams_aborted < n:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{self.streams_aborted} stream(s) aborted, wanted {n}")
            await asyncio.sleep(0.01)


@dataclass
class Thread:
    """One chat's server-side history in conversation mode."""

    owner: str
    messages: list[dict]
    last_id: str = ""
    busy: bool = False


def _words(messages: list[dict]) -> int:
    return sum(len(str(m.get("content", "")).split()) for m in messages)


def _frame(data: dict) -> bytes:
    return b"data: " + json.dumps({"type": "chat:completion", "data": data}).encode() + b"\n\n"


class _Status(Exception):
    """An HTTP error answer from one of the fake's own routes."""

    def __init__(self, status: int, body: dict) -> None:
        super().__init__(status)
        self.status, self.body = status, body


def _echo_token(body: bytes, token: str) -> bytes:
    """A token check's answer names the token it was shown (the cassettes recorded a sign-in,
    which hands out a new one); only a rotation changes it (``accounts``)."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body
    if not isinstance(answer, dict) or "token" not in answer:
        return body
    return json.dumps({**answer, "token": token}).encode()


def _inband(error: dict) -> bytes:
    """One SSE event carrying an in-band error, shaped as the upstream sends them."""
    frame = {"data": {"data": {"done": True, "error": error}, "done": True, "error": error}}
    frame["type"] = "chat:completion"
    return b"data: " + json.dumps(frame).encode() + b"\n\n"


def _url(req, seen: Seen) -> str:
    """The URL the cassettes know the request by: a moved path as the path it moved from."""
    query = f"?{req.query}" if req.query else ""
    return f"{req.protocol}://{req.host}{seen.path}{query}"


@functools.cache
def _waf_page() -> bytes:
    """The recorded Aliyun block page (cassette ``error_http_405_waf``)."""
    return _load("error_http_405_waf").responses[0]["body"]["string"]


def _load(name: str) -> Cassette:
    file = CASSETTES / f"{name}.yaml"
    if not file.is_file():  # Cassette.load would silently give an empty cassette
        raise FileNotFoundError(file)
    return Cassette.load(
        path=str(file),
        match_on=[method, path],
        record_mode=RecordMode.NONE,
        allow_playback_repeats=True,
    )


class _Handler(RequestHandler):
    def initialize(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.gone = False

    def on_connection_close(self) -> None:
        self.gone = True

    async def _serve(self, *_: str) -> None:
        req = self.request
        moved_from = {new: old for old, new in self.fake.moved.items()}
        gone = req.path in self.fake.moved and req.path not in moved_from
        seen = Seen(
            req.method,
            moved_from.get(req.path, req.path),
            dict(parse_qsl(req.query, keep_blank_values=True)),
            HTTPHeaders(req.headers),
            req.body,
            id(req.connection.stream),
            req.remote_ip or "",
            time.monotonic(),
        )
        self.fake.requests.append(seen)
        if gone:  # recorded as sent: the caller used a path the upstream moved away from
            self.set_status(404)
            self.finish({"detail": "Not Found"})
            return
        if seen.path != COMPLETIONS:
            await self._answer(seen)
            return
        fake, token = self.fake, seen.query.get("token", "")
        fake.in_flight[token] += 1
        fake.most_in_flight[token] = max(fake.most_in_flight[token], fake.in_flight[token])
        try:
            await self._answer(seen)
        finally:
            fake.in_flight[token] -= 1

    async def _answer(self, seen: Seen) -> None:
        req = self.request
        blocked = seen.source in self.fake.waf_sources
        if blocked and seen.method == "POST" and seen.path == COMPLETIONS:
            self.set_status(405)
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish(_waf_page())
            return
        stalled = self.fake.stall_headers and seen.path == COMPLETIONS
        if stalled or seen.path in self.fake.stall_paths:
            while not self.gone:
                await asyncio.sleep(0.05)
            return
        if seen.path == "/api/config":  # the real one always answers (PROTOCOL.md 6.2)
            strict = self.fake.captcha_valid is not None
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"features": {"enable_captcha": strict}}))
            return
        bearer = (seen.headers.get("Authorization") or "").removeprefix("Bearer ")
        if seen.method == "POST" and seen.path == FILES and self.fake.upload_template():
            try:
                answer = self.fake.upload(bearer, self.request.files.get("file") or [])
            except _Status as err:
                self.set_status(err.status)
                answer = err.body
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(answer))
            return
        if seen.method == "GET" and seen.path == "/api/v1/auths/" and bearer in self.fake.accounts:
            answer = self.fake.accounts[bearer]
            if answer == "waf":  # the Aliyun block page, which says nothing about the token
                self.set_status(403)
                self.set_header("Content-Type", "text/html")
                self.finish(WAF_PAGE)
                return
            if isinstance(answer, int):  # an HTTP error with the upstream's JSON detail
                self.set_status(answer)
                answer = BAD_TOKEN if answer in (401, 403) else {"detail": f"HTTP {answer}"}
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(answer))
            return
        if seen.method == "POST" and seen.path == CHATS + "new":
            self.set_header("Content-Type", "application/json")
            try:
                answer = self.fake.create_chat(bearer, seen.body)
            except _Status as err:
                self.set_status(err.status)
                answer = err.body
            self.finish(json.dumps(answer))
            return
        if seen.method == "DELETE" and seen.path.startswith(CHATS):
            self.set_header("Content-Type", "application/json")
            try:
                answer = self.fake.delete_chat(seen.path[len(CHATS) :], bearer)
            except _Status as err:
                self.set_status(err.status)
                answer = err.body
            self.finish(json.dumps(answer))
            return
        failing = self.fake.fail_paths.get(seen.path)
        if failing:
            self.set_status(failing)
            self.finish({"detail": f"failing on purpose (HTTP {failing})"})
            return
        if seen.method == "GET" and seen.path == "/api/models":
            token = (seen.headers.get("Authorization") or "").removeprefix("Bearer ")
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(self.fake.model_list(token)))
            return
        rejected = self.fake._reject(seen)
        if not rejected and seen.method == "POST" and seen.path == COMPLETIONS:
            self.fake.keep_chat(seen)
            if self.fake.converse:
                await self._converse(seen)
                return
        if not rejected and seen.path == COMPLETIONS and self.fake.answers:
            self.set_header("Content-Type", "text/event-stream; charset=utf-8")
            self.write(self.fake.answers.pop(0))
            await self.finish()
            self.fake.streams_completed += 1
            return
        refusal = None if rejected else self.fake._captcha_refusal(seen)
        refusal = refusal or (None if rejected else self.fake._feature_refusal(seen))
        refusal = refusal or (None if rejected else self.fake._limit_refusal(seen))
        if refusal is not None:
            self.set_header("Content-Type", "text/event-stream; charset=utf-8")
            await self._stream(refusal)
            return
        response = (
            None
            if rejected
            else self.fake._pick(Request(req.method, _url(req, seen), req.body, dict(req.headers)))
        )
        if rejected or response is None:
            code, detail = rejected or (404, {"detail": "Not Found"})
            self.set_status(code)
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(detail, ensure_ascii=False, separators=(",", ":")))
            return
        self.set_status(response["status"]["code"], response["status"]["message"])
        content_type = ""
        for name, values in response["headers"].items():
            if name.lower() not in DROPPED:
                self.clear_header(name)
                for value in values:
                    self.add_header(name, value)
            content_type = values[0] if name.lower() == "content-type" else content_type
        body = response["body"]["string"] or b""
        if bearer and seen.path == "/api/v1/auths/":
            body = _echo_token(body, bearer)
        if content_type.startswith("text/event-stream"):
            await self._stream(body)
        else:
            self.finish(body)

    async def _converse(self, seen: Seen) -> None:
        """Answer one turn of a chat the fake keeps (conversation mode)."""
        fake, body = self.fake, json.loads(seen.body)
        token, chat_id = seen.query.get("token", ""), body["chat_id"]
        parent = body.get("current_user_message_parent_id")
        thread = fake.threads.get(chat_id)
        error: tuple[int, dict] | None = None
        if chat_id in fake.busy_chats or (thread is not None and thread.busy):
            error = 409, {"code": "SESSION_BUSY", "detail": "a turn of this chat is in progress"}
        elif parent is not None and (thread is None or thread.owner != token):
            error = 400, {"detail": f"chat {chat_id} not found for this user"}
        elif parent is not None and parent != thread.last_id:  # type: ignore[union-attr]
            error = 400, {"detail": f"parent message {parent} not found in chat {chat_id}"}
        if error is not None:
            self.set_status(error[0])
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(error[1]))
            return
        if thread is None:
            thread = fake.threads[chat_id] = Thread(token, [])
        held = _words(thread.messages)
        thread.busy = True
        try:
            answer = f"Turn {1 + sum(m['role'] == 'assistant' for m in thread.messages)}."
            self.set_header("Content-Type", "text/event-stream; charset=utf-8")
            self.write(_frame({"phase": "answer", "delta_content": answer}))
            await self.flush()
            if fake.turn_time:
                await asyncio.sleep(fake.turn_time)
            prompt = held + _words(body["messages"])
            usage = {"prompt_tokens": prompt, "completion_tokens": 2, "total_tokens": prompt + 2}
            self.write(_frame({"phase": "other", "usage": {**usage, "cached_tokens": held}}))
            self.write(_frame({"phase": "done", "done": True}))
            await self.finish()
        except StreamClosedError:
            fake.streams_aborted += 1
            return
        finally:
            thread.busy = False
        thread.messages += [*body["messages"], {"role": "assistant", "content": answer}]
        thread.last_id = body["id"]
        fake.streams_completed += 1

    async def _stream(self, body: bytes) -> None:
        try:
            for index, piece in enumerate(self.fake._pieces(body)):
                if index and self.fake.pace > 0:
                    await asyncio.sleep(self.fake.pace)
                if self.gone:
                    raise StreamClosedError()
                while index == self.fake.stall_after and not self.gone:
                    await asyncio.sleep(0.05)
                if index == self.fake.cut_after:
                    await asyncio.sleep(CUT_DELAY)
                    self.request.connection.stream.close()
                    raise StreamClosedError()
                self.write(piece)
                await self.flush()
            await self.finish()
        except StreamClosedError:
            self.fake.streams_aborted += 1
            return
        self.fake.streams_completed += 1

    get = post = put = patch = delete = _serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve cassettes as a fake chat.z.ai.")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--pace", type=float, default=0.0, help="seconds between SSE events")
    parser.add_argument("--split", choices=("event", "random"), default="event")
    parser.add_argument("--no-verify", action="store_true", help="skip the signature checks")
    parser.add_argument("cassettes", nargs="+", help="names in cassettes/, without .yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("vcr").setLevel(logging.WARNING)

    async def serve() -> None:
        fake = FakeUpstream(
            *args.cassettes, pace=args.pace, split=args.split, verify=not args.no_verify
        )
        url = await fake.start(args.port)
        logging.info("fake upstream on %s playing %s", url, ", ".join(args.cassettes))
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()

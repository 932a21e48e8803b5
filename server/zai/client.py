"""The upstream client: the only code that talks to chat.z.ai.

Owns ``ZaiClient``: reading the front-end version from the home page (cached, one fetch at a
time, re-read on a 426), creating guest credentials (``GET /api/v1/auths/``, falling back to
``POST /api/v1/auths/guest``), validating a token, and opening a completion stream. HTTP-level
failures come back as ``GatewayError`` kinds (``failures.http_failure``); connection failures
and timeouts as ``unavailable``/``timeout``. ``models`` reads ``GET /api/models``;
``upload_image`` posts one image to the file API (``server/zai/files.py``).
``ZAI_BASE_URL`` moves every URL at once.
"""

import asyncio
import dataclasses
import re
import time
from typing import Any

import msgspec
from loguru import logger
from redis.exceptions import RedisError

from server.core.chat import Conversation, Image
from server.core.errors import GatewayError
from server.core.images import extension
from server.egress import ROUTE_FAULTS, Egress, Route
from server.transport import Exchange, NativeTransport, Timeouts, Transport, TransportError
from server.zai.failures import http_failure
from server.zai.files import upload_body, uploaded
from server.zai.identity import Credential, credential_from_auth
from server.zai.models import UpstreamModel, decode_models
from server.zai.request import Dialect, browser_headers, build_completion, build_new_chat
from state.facts import Facts

__all__ = ["VersionPolicy", "ZaiClient"]

_FE_VERSION = re.compile(rb"prod-fe-\d+(?:\.\d+)+")
_ERROR_BODY_LIMIT = 64 * 1024
_RETRY_VERSION_AFTER = 30.0  # seconds, when the home page did not tell the version
_LOCAL_VERSION_TTL = 60.0  # seconds a process trusts its copy before asking the shared one
_PROBE_TIMEOUTS = Timeouts(connect=5.0, headers=10.0, idle=10.0)  # within the probe lock's 20 s


@dataclasses.dataclass(frozen=True, slots=True)
class VersionPolicy:
    """How the front-end version is chosen: pinned, else learned and kept ``ttl`` seconds."""

    pinned: str = ""
    fallback: str = ""
    ttl: float = 3600.0


class ZaiClient:
    """Speaks the chat.z.ai web dialect for the rest of the gateway.

    It takes plain values (the dialect's moving values, timeouts, the version policy), never
    the application's settings, so the dialect can be swapped or tested on its own.
    """

    def __init__(
        self,
        dialect: Dialect,
        timeouts: Timeouts,
        versions: VersionPolicy,
        facts: Facts | None = None,
        egress: Egress | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.base_url = dialect.base_url
        self.egress = egress or Egress()
        self.transport = transport or NativeTransport()  # closed by ``close``
        self._open_stream = self.transport.open_stream
        self.timeouts = timeouts
        self.reconfigure(dialect, versions)
        self._version = ""
        self._version_at = 0.0
        self._version_fetch: asyncio.Future[str] | None = None
        self._facts = facts
        self._captcha = False
        self._captcha_at = float("-inf")

    def __repr__(self) -> str:
        return f"<ZaiClient {self.base_url} fe={self._pinned_version or self._version or '?'}>"

    def reconfigure(self, dialect: Dialect, versions: VersionPolicy) -> None:
        """Use new moving values (the live config) from the next call on. The base URL stays
        this client's: moving it means new connections, a restart."""
        self.dialect = dataclasses.replace(dialect, base_url=self.base_url)
        self._browser = browser_headers(self.dialect)  # every call's but completions' (own page)
        self._pinned_version = versions.pinned
        self._fallback_version = versions.fallback
        self._version_ttl = versions.ttl

    async def close(self) -> None:
        await self.transport.close()

    # Front-end version

    async def fe_version(self) -> str:
        """The current ``prod-fe-x.y.z``: pinned, else learned once for all replicas."""
        if self._pinned_version:
            return self._pinned_version
        if self._version and time.monotonic() - self._version_at < _LOCAL_VERSION_TTL:
            return self._version
        shared = await self._shared_version()
        if shared:
            self._version, self._version_at = shared, time.monotonic()
            return shared
        return await self.refresh_fe_version()

    async def refresh_fe_version(self, stale: str = "") -> str:
        """Re-read the version (after a 426 on ``stale``); one fetch at a time per process,
        and none if another replica already learned a newer one."""
        if self._pinned_version:
            return self._pinned_version
        shared = await self._shared_version() if stale else None
        if shared and shared != stale:
            self._version, self._version_at = shared, time.monotonic()
            return shared
        if self._version_fetch is None or self._version_fetch.done():
            self._version_fetch = asyncio.ensure_future(self._read_fe_version())
        return await asyncio.shield(self._version_fetch)

    async def _shared_version(self) -> str | None:
        if self._facts is None:
            return None
        try:
            return await self._facts.get("fe_version", self._version_ttl)
        except RedisError as exc:
            logger.debug("shared facts unreachable: {}", exc)
            return None

    async def _read_fe_version(self) -> str:
        try:
            home = self.dialect.paths.home
            status, body = await self._fetch("GET", home, None, {"Accept": "text/html"})
            found = _FE_VERSION.search(body) if status == 200 else None
        except GatewayError as exc:
            logger.warning("cannot read the front-end version from the home page: {}", exc)
            found = None
        now = time.monotonic()
        if found is None:
            version = self._version or self._fallback_version
            logger.warning("front-end version not found on the home page; using {}", version)
            # Look again soon rather than trusting a guess.
            now -= max(0.0, _LOCAL_VERSION_TTL - _RETRY_VERSION_AFTER)
        else:
            version = found[0].decode()
            if version != self._version:
                logger.info("upstream front-end version: {}", version)
            if self._facts is not None:
                try:
                    await self._facts.put("fe_version", version)
                except RedisError as exc:
                    logger.debug("could not share the front-end version: {}", exc)
        self._version, self._version_at = version, now
        return version

    # Captcha gate

    async def captcha_enabled(self) -> bool:
        """Whether ``/api/config`` says ``features.enable_captcha``: learned once for all
        replicas and kept as long as the FE version."""
        if time.monotonic() - self._captcha_at < _LOCAL_VERSION_TTL:
            return self._captcha
        shared = None
        if self._facts is not None:
            try:
                shared = await self._facts.get("enable_captcha", self._version_ttl)
            except RedisError as exc:
                logger.debug("shared facts unreachable: {}", exc)
        if shared is None:
            shared = "1" if await self._read_captcha_flag() else "0"
            if self._facts is not None:
                try:
                    await self._facts.put("enable_captcha", shared)
                except RedisError as exc:
                    logger.debug("could not share the captcha flag: {}", exc)
        self._captcha, self._captcha_at = shared == "1", time.monotonic()
        return self._captcha

    async def _read_captcha_flag(self) -> bool:
        try:
            status, body = await self._fetch("GET", self.dialect.paths.config, None, {})
            config = msgspec.json.decode(body) if status == 200 else {}
        except (GatewayError, msgspec.DecodeError) as exc:
            logger.warning("cannot read /api/config: {}", exc)
            return False
        features = config.get("features") if isinstance(config, dict) else None
        return isinstance(features, dict) and features.get("enable_captcha") is True

    # Identity

    async def guest_credential(self, route: Route | None = None) -> Credential:
        status, body = await self._fetch("GET", self.dialect.paths.auths, None, {}, route)
        if status != 200:
            guest = self.dialect.paths.guest
            status, body = await self._fetch("POST", guest, b"{}", {}, route)
        if status != 200:
            raise http_failure(status, body)
        try:
            return credential_from_auth(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise GatewayError("bad_response", f"guest sign-in answered {exc}") from None

    async def validate(self, token: str) -> Credential | None:
        """The account behind a token, or ``None`` when the upstream says it is invalid (401,
        or a 403 that is not the WAF's page). Its ``token`` may differ from ``token``: the
        upstream rotated it. Any other answer raises: it says nothing about the token."""
        auth = _bearer(token)
        path = self.dialect.paths.auths
        status, body = await self._fetch("GET", path, None, auth, token=token)
        if status != 200:
            failure = http_failure(status, body)
            if status in (401, 403) and failure.kind == "token_rejected":
                return None
            raise failure
        return credential_from_auth(body)

    # Models

    async def models(self, token: str, pooled: bool = True) -> list[UpstreamModel]:
        """``GET /api/models`` as this token's tier sees it (``pooled``: paced as a pooled
        token; a guest is not)."""
        paced = token if pooled else ""
        path = self.dialect.paths.models
        status, body = await self._fetch("GET", path, None, _bearer(token), token=paced)
        if status != 200:
            raise http_failure(status, body)
        try:
            return decode_models(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise GatewayError("bad_response", f"{path} answered {exc}") from None

    # Chats

    async def create_chat(self, cred: Credential, conv: Conversation, route: Route | None) -> str:
        """``POST /api/v1/chats/new`` as the page creates a chat before its first completion
        (``Dialect.create_chats``); the chat id the upstream answered."""
        head = {
            **self._browser,
            **_bearer(cred.token),
            "Accept": "application/json",
            "Content-Type": "application/json",
            "X-FE-Version": await self.fe_version(),
        }
        url = self.base_url + self.dialect.paths.new_chat
        body, model = build_new_chat(conv), conv.model.id
        exchange = await self._open("POST", url, head, body, model, route, token=_paced(cred))
        try:
            answer = await exchange.read_all(_ERROR_BODY_LIMIT)
        except TransportError as exc:
            raise _transport_failure(exc, conv.model.id) from None
        finally:
            exchange.close()
        if exchange.status != 200:
            raise http_failure(exchange.status, answer, conv.model.id)
        try:
            chat = msgspec.json.decode(answer)
        except msgspec.DecodeError:
            chat = None
        chat_id = chat.get("id") if isinstance(chat, dict) else None
        if not isinstance(chat_id, str) or not chat_id:
            detail = f"{self.dialect.paths.new_chat} answered no chat id"
            raise GatewayError("bad_response", detail, model=conv.model.id)
        return chat_id

    async def delete_chat(self, token: str, chat_id: str, pooled: bool = True) -> bool:
        """``DELETE /api/v1/chats/{id}``: True when the chat is gone (deleted, or not found),
        False when the token can no longer delete anything (401). Other answers raise.
        ``pooled``: paced as a pooled token (a guest's is not)."""
        path = self.dialect.paths.chat.replace("{id}", chat_id)
        paced = token if pooled else ""
        status, body = await self._fetch("DELETE", path, None, _bearer(token), token=paced)
        if status in (200, 404):
            return True
        if status == 401:
            return False
        raise http_failure(status, body)

    # Files (vision)

    async def upload_image(
        self, cred: Credential, image: Image, route: Route | None = None
    ) -> dict[str, Any]:
        """``POST /api/v1/files/`` of one image with ``cred`` (a user token: a guest gets a
        401); the file object the upstream answered."""
        name = f"image-{image.digest[:12]}.{extension(image.media_type)}"
        body, content_type = upload_body(image.data, name, image.media_type)
        head = {
            **_bearer(cred.token),
            "User-Agent": self.dialect.user_agent,
            "Accept": "application/json",
            "Content-Type": content_type,
            "X-FE-Version": await self.fe_version(),
            "Origin": self.base_url,
            "Referer": f"{self.base_url}/",
        }
        url = self.base_url + self.dialect.paths.files
        exchange = await self._open("POST", url, head, body, "", route, token=_paced(cred))
        try:
            answer = await exchange.read_all(_ERROR_BODY_LIMIT)
        except TransportError as exc:
            raise _transport_failure(exc, "") from None
        finally:
            exchange.close()
        if exchange.status not in (200, 201):
            raise http_failure(exchange.status, answer)
        try:
            return uploaded(answer)
        except ValueError as exc:
            raise GatewayError("bad_response", str(exc)) from None

    # Completions

    async def open_completion(
        self,
        cred: Credential,
        conv: Conversation,
        captcha: str = "",
        route: Route | None = None,
        chat_id: str | None = None,
        files: dict[str, dict[str, Any]] | None = None,
        parent_id: str | None = None,
        message_id: str | None = None,
    ) -> Exchange:
        """Send the completion request (by ``route``); return the open 200 stream or raise
        GatewayError. ``files``: the uploaded file of each image, by digest; ``parent_id``
        continues a chat under that assistant message, ``message_id`` names the answer's."""
        version = await self.fe_version()
        req = build_completion(
            self.dialect,
            cred,
            conv,
            version,
            chat_id=chat_id,
            captcha=captcha,
            files=files,
            parent_id=parent_id,
            message_id=message_id,
        )
        exchange = await self._open(
            "POST", req.url, req.headers, req.body, conv.model.id, route, token=_paced(cred)
        )
        if exchange.status == 200:
            return exchange
        try:
            body = await exchange.read_all(_ERROR_BODY_LIMIT)
        except TransportError:
            body = b""
        finally:
            exchange.close()
        raise http_failure(exchange.status, body, conv.model.id)

    async def probe_waf(self, route: Route) -> bool | None:
        """Whether the WAF still blocks ``route`` (PROTOCOL.md section 6.3): a bare
        unauthenticated ``POST {}`` to the completions path; the block page -> True, any
        other answer (``{"detail": "Not authenticated"}`` or the like) -> False, no answer ->
        None. It spends no token and no captcha."""
        head = {**self._browser, "Accept": "application/json", "Content-Type": "application/json"}
        url = self.base_url + self.dialect.paths.completions
        try:
            exchange = await self._open("POST", url, head, b"{}", "", route, _PROBE_TIMEOUTS)
            try:
                body = await exchange.read_all(_ERROR_BODY_LIMIT)
            finally:
                exchange.close()
        except (GatewayError, TransportError) as exc:
            logger.info("WAF probe of route {}: no answer ({})", route.id, exc)
            return None
        return http_failure(exchange.status, body).kind == "waf_blocked"

    # One step each, by a given route, for the self-check (nothing is cached or shared)

    async def home_version(self, route: Route) -> str:
        """The ``prod-fe-x.y.z`` the home page shows by ``route`` ("" when none)."""
        home = self.dialect.paths.home
        status, body = await self._fetch("GET", home, None, {"Accept": "text/html"}, route)
        if status != 200:
            raise http_failure(status, body)
        found = _FE_VERSION.search(body)
        return found[0].decode() if found else ""

    async def config_captcha(self, route: Route) -> bool:
        """Whether ``/api/config`` (read by ``route``) says ``features.enable_captcha``."""
        status, body = await self._fetch("GET", self.dialect.paths.config, None, {}, route)
        if status != 200:
            raise http_failure(status, body)
        try:
            config = msgspec.json.decode(body)
        except msgspec.DecodeError:
            detail = f"{self.dialect.paths.config} is not JSON"
            raise GatewayError("bad_response", detail) from None
        features = config.get("features") if isinstance(config, dict) else None
        return isinstance(features, dict) and features.get("enable_captcha") is True

    async def _fetch(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        route: Route | None = None,
        token: str = "",
    ) -> tuple[int, bytes]:
        head = {**self._browser, "Accept": "application/json", **headers}
        if body is not None:
            head["Content-Type"] = "application/json"
        url = self.base_url + path
        exchange = await self._open(method, url, head, body, "", route, token=token)
        try:
            return exchange.status, await exchange.read_all(4 << 20)
        except TransportError as exc:
            raise _transport_failure(exc, "") from None
        finally:
            exchange.close()

    async def _open(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        model: str,
        route: Route | None = None,
        timeouts: Timeouts | None = None,
        token: str = "",
    ) -> Exchange:
        """Send by ``route``, or, with none given, by the next route in turn: a call no
        route is named for moves on when its route's proxy is unreachable (shutting that
        route for everyone); a named route's failure is its caller's to handle. ``token``:
        the pooled token the call is made with ("" for guests and no token), paced on its
        own as well."""
        while True:  # each turn shuts a route: it ends by the last open one
            chosen = await self.egress.pace(route, model, token)
            try:
                return await self._open_stream(
                    method, url, headers, body, timeouts or self.timeouts, chosen.proxy
                )
            except TransportError as exc:
                err = _transport_failure(exc, model)
                if route is not None or err.kind not in ROUTE_FAULTS:
                    raise err from None
                if not await self.egress.trip(chosen, err):
                    raise err from None


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _paced(cred: Credential) -> str:
    """The token a call with ``cred`` is paced by: a pooled one's; "" for a guest, a one-shot
    identity no second call is made with (pacing it would only cost a key)."""
    return "" if cred.role == "guest" else cred.token


def _transport_failure(exc: TransportError, model: str) -> GatewayError:
    kind = "route_unreachable" if exc.proxy else "timeout" if exc.timeout else "unavailable"
    return GatewayError(kind, str(exc), model=model)

"""The gateway's client of the solver sidecar (``CAPTCHA_URL``).

Owns ``Sidecar`` and ``SidecarError``. ``solve(why)`` POSTs ``{"scene", "region"}`` and returns
the ``SolveAnswer``; anything else (a refused connection, no answer within ``CAPTCHA_TIMEOUT``,
a status other than 200, a body that is not the contract) is a ``SidecarError`` saying in plain
words what happened, with the URL's password masked and never a param. Every call is counted in
``zai_gateway_captcha_sidecar_fetches_total{why,outcome}`` (why: ``ahead`` or ``demand``).
"""

import asyncio
import base64
from urllib.parse import unquote, urlsplit, urlunsplit

import msgspec

from server.banner import mask_url
from server.captcha.wire import SolveAnswer, SolveAsk, SolveRefusal
from server.core.errors import shown
from server.ops.metrics import CAPTCHA_SIDECAR
from server.transport import Timeouts, TransportError, open_stream

__all__ = ["Sidecar", "SidecarError"]

_ANSWER_LIMIT = 64 << 10  # bytes: a param is a few KB


class SidecarError(Exception):
    """The sidecar gave no param; the text is safe to log and to show a client."""


class Sidecar:
    """One solver sidecar: ``await sidecar.solve("demand")`` is a fresh single-use param."""

    def __init__(self, url: str, scene: str, region: str, timeout: float) -> None:
        parts = urlsplit(url)
        self.label = mask_url(url)  # the only form of the URL ever shown
        self.timeout = timeout
        self._url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if parts.username is not None or parts.password is not None:
            pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        self._body = msgspec.json.encode(SolveAsk(scene, region))
        self._timeouts = Timeouts(connect=min(5.0, timeout), headers=timeout, idle=timeout)

    def __repr__(self) -> str:
        return f"<Sidecar {self.label} timeout={self.timeout:g}s>"

    async def solve(self, why: str) -> SolveAnswer:
        outcome = "failed"
        try:
            async with asyncio.timeout(self.timeout):
                status, raw = await self._post()
            answer = _decode(status, raw)
            outcome = "ok"
            return answer
        except TimeoutError:
            outcome = "timeout"
            raise SidecarError(self._says(f"gave no param within {self.timeout:g} s")) from None
        except TransportError as exc:
            outcome = "timeout" if exc.timeout else "unreachable"
            raise SidecarError(self._says(f"could not be reached: {exc}")) from None
        except _Refused as exc:
            outcome = exc.outcome
            raise SidecarError(self._says(str(exc))) from None
        finally:
            CAPTCHA_SIDECAR.labels(why, outcome).inc()

    async def _post(self) -> tuple[int, bytes]:
        exchange = await open_stream("POST", self._url, self._headers, self._body, self._timeouts)
        try:
            return exchange.status, await exchange.read_all(_ANSWER_LIMIT)
        finally:
            exchange.close()

    def _says(self, what: str) -> str:
        return f"the solver sidecar at {self.label} {what}"


class _Refused(Exception):
    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome


def _decode(status: int, raw: bytes) -> SolveAnswer:
    """The answer, or ``_Refused`` with the sidecar's own message (a param is never echoed:
    a 200 body that is not the contract is described, not shown)."""
    if status != 200:
        try:
            message = msgspec.json.decode(raw, type=SolveRefusal).error.message
        except msgspec.DecodeError:
            message = ""
        said = f": {shown(message, 300)}" if message else ""
        raise _Refused("refused", f"answered {status}{said}")
    try:
        return msgspec.json.decode(raw, type=SolveAnswer)
    except msgspec.DecodeError as exc:
        # The error names the field, never its value.
        raise _Refused("bad_answer", f"answered 200 but not a usable param ({exc})") from None

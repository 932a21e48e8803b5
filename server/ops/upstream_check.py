"""The upstream self-check (``GET /v1/upstream/check``, admin): one tiny real exchange on each
egress route, step by step, each step's outcome in plain words.

Owns ``check_upstream``. For each route: its WAF breaker (shared state), the home page (the
front-end version), ``/api/config`` (the captcha flag), a guest sign-in, where a captcha
param would come from, and, with ``complete``, a one-token completion. Every call goes by that
route and waits for its pacing slot like real traffic; the completion spends a guest sign-in
and, when the upstream wants one, a param from the shared pool, so it is asked for
explicitly. A route whose breaker is open gets no completion (it would lengthen the block).
Nothing secret is shown: no token, no param, proxy credentials masked; the details are the
error table's messages, which carry the upstream's own words. With SELF_CHECK_INTERVAL
one replica at a time runs it in the background (``server.services``) and shares the report
in ``state.facts`` (``SELF_CHECK``); ``/metrics`` exports it on every replica.
"""

from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from server.core.chat import Conversation, Turn
from server.core.errors import GatewayError
from server.core.models import find_model
from server.egress import Route
from server.transport import TransportError
from server.zai.identity import Credential
from server.zai.stream import AnswerStream

if TYPE_CHECKING:  # the services import this module: no cycle at run time
    from server.services import Services
    from server.zai.client import ZaiClient

__all__ = ["check_upstream"]

_MODEL = "GLM-4.7"  # open to guests (USERS.md 8)
_BREAKER_WORDS = {
    "ok": "closed: completions may use this route",
    "blocked": "open after a WAF block page: no completion is sent on this route for {left:.0f} s",
    "half-open": "its window is over: the next request probes the route before using it",
    "unreachable": "open after its proxy could not be reached: nothing is sent on this route "
    "for {left:.0f} s",
}


async def check_upstream(services: "Services", complete: bool = False) -> dict[str, Any]:
    """``{"ok", "routes": [{"id", "label", "ok", "steps": [{"name", "ok", "detail"}]}]}``."""
    routes = [await _check_route(services, route, complete) for route in services.egress.routes]
    return {"ok": all(route["ok"] for route in routes), "routes": routes}


async def _check_route(services: "Services", route: Route, complete: bool) -> dict[str, Any]:
    client = services.client
    captchas = services.captchas
    steps: list[dict[str, Any]] = []

    def step(name: str, ok: bool, detail: str) -> None:
        steps.append({"name": name, "ok": ok, "detail": detail})

    open_route = True
    try:
        states = await services.egress.status()
        state = next(row for row in states if row["id"] == route.id)
        open_route = state["state"] == "ok"
        down = state["state"] == "blocked" and state["reason"] == "route_unreachable"
        words = _BREAKER_WORDS["unreachable" if down else state["state"]]
        words = words.format(left=state["blocked_for"])
        step("breaker", open_route, words)
    except RedisError as exc:
        step("breaker", False, f"the shared state store (Redis) is unreachable: {exc}")

    try:
        version = await client.home_version(route)
        step(
            "home page",
            bool(version),
            f"front-end version {version}"
            if version
            else "the home page answered but shows no prod-fe-x.y.z version: set "
            "ZAI_FE_VERSION to the page's current one",
        )
    except GatewayError as err:
        step("home page", False, err.message)

    wanted = None
    try:
        wanted = await client.config_captcha(route)
        said = "requires" if wanted else "does not require"
        step("config", True, f"/api/config says the upstream {said} a captcha")
    except GatewayError as err:
        step("config", False, err.message)

    cred: Credential | None = None
    try:
        cred = await client.guest_credential(route)
        step("sign-in", True, f"a guest sign-in worked (role {cred.role})")
    except GatewayError as err:
        step("sign-in", False, err.message)

    needed = captchas.mode == "on" or (captchas.mode == "auto" and bool(wanted))
    if not needed:
        step("captcha", True, f"no captcha param needed (ZAI_CAPTCHA={captchas.mode})")
    else:
        depth = 0
        if captchas.pool is not None:
            try:
                depth = await captchas.pool.depth()
            except RedisError:
                depth = 0
        sidecar = captchas.sidecar
        failed = "no solver sidecar (CAPTCHA_URL) is set"
        if not depth and sidecar is not None:
            failed = await captchas.ask_ahead()  # the param it gets waits in the pool
        if depth:
            step("captcha", True, f"{depth} single-use param(s) in the shared pool")
        elif not failed and sidecar is not None:  # only the sidecar's answer empties it
            step(
                "captcha",
                True,
                f"the shared pool was empty; the solver sidecar at {sidecar.label} "
                "answered a param (now in the pool)",
            )
        else:
            step(
                "captcha",
                False,
                "the upstream demands a captcha_verify_param for each completion and the "
                f"shared pool is empty ({failed}): push params with POST /v1/captcha, run a "
                "solver sidecar (CAPTCHA_URL), or callers send their own (X-Zai-Captcha header "
                "or zai_captcha body field)",
            )

    if complete:
        if cred is None:
            step("completion", False, "not tried: no credential (see sign-in)")
        elif not open_route:
            step("completion", False, "not tried: the route's WAF breaker is not closed")
        else:
            param = (await captchas.take())[0] if needed else ""
            try:
                size = await _one_token(client, cred, route, param)
                step("completion", True, f"a one-token completion answered ({size} characters)")
            except GatewayError as err:
                if err.kind == "waf_blocked":  # a real block: every replica must know
                    await services.egress.trip(route, err)
                step("completion", False, f"{err.kind}: {err.message}")
    return {
        "id": route.id,
        "label": route.label,
        "ok": all(s["ok"] for s in steps),
        "steps": steps,
    }


async def _one_token(client: "ZaiClient", cred: Credential, route: Route, param: str) -> int:
    model = find_model(_MODEL)
    conv = Conversation(
        model=model,  # type: ignore[arg-type]
        turns=[Turn("user", "Say OK.")],
        max_tokens=1,
        thinking=False,
        request_id="self-check",
    )
    exchange = await client.open_completion(cred, conv, param, route)
    stream = AnswerStream(conv.model.id)
    size = 0
    try:
        try:
            async for chunk in exchange:
                reasoning, answer = stream.feed(chunk)
                size += len(reasoning) + len(answer)
                if stream.done:
                    break
            reasoning, answer = stream.end()
        except TransportError as exc:
            raise GatewayError("timeout" if exc.timeout else "unavailable", str(exc)) from None
    finally:
        exchange.close(drain=stream.done)
    return size + len(reasoning) + len(answer)

"""Token pool upkeep: reading configured tokens, and checking them against the upstream.

Owns ``configured_tokens`` (``AUTH_TOKENS_FILE``: one per line, comma-separated, or mixed;
blank lines and ``#`` comments ignored; plus ``ZAI_TOKENS``) and ``check_tokens``: each token
is shown to ``GET /api/v1/auths/``; ``role: user`` goes (back) into rotation, a guest token is
refused with that reason, a 401 (or a JSON 403) marks it dead. An answer carrying another
token means the upstream rotated it: the new one replaces it atomically (``state/rotation``,
compare-and-set on the old), the old stays marked rotated for ``POOL_ROTATION_GRACE``. A check
that cannot reach the upstream (network error, timeout, 5xx, WAF page) leaves the token as
it was: only the upstream's own "invalid" kills a token.
"""

import asyncio
import re
from dataclasses import dataclass

from loguru import logger

from server.core.errors import GatewayError
from server.settings import Settings
from server.zai.client import ZaiClient
from state.keys import mask
from state.pool import TokenPool
from state.rotation import TokenRotation

__all__ = ["CheckResult", "check_tokens", "configured_tokens", "parse_tokens"]


TOKEN_PATTERN = r"^[!-~]{1,8192}$"  # printable ASCII, no spaces: what a header can carry
_TOKEN = re.compile(TOKEN_PATTERN)


def parse_tokens(text: str) -> list[str]:
    tokens = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        for part in (part.strip() for part in line.split(",")):
            if not part:
                continue
            if _TOKEN.match(part):
                tokens.append(part)
            else:
                logger.warning(
                    "ignored a configured token that is not printable ASCII: {}", mask(part)
                )
    return list(dict.fromkeys(tokens))


def configured_tokens(settings: Settings) -> list[str]:
    text = settings.auth_tokens_file.read_text() if settings.auth_tokens_file else ""
    return parse_tokens(text + "\n" + ",".join(settings.zai_tokens))


@dataclass(frozen=True, slots=True)
class CheckResult:
    id: str
    masked: str
    verdict: str  # "alive" | "dead" | "unknown"
    reason: str


async def check_tokens(
    pool: TokenPool,
    client: ZaiClient,
    ids: list[str] | None = None,
    parallel: int = 8,
    grace: float = 300.0,
) -> list[CheckResult]:
    tokens = await pool.tokens()
    chosen = [tid for tid in (ids if ids is not None else sorted(tokens)) if tid in tokens]
    gate = asyncio.Semaphore(parallel)
    rotation = TokenRotation(pool.redis, pool.keys, grace)

    async def check(tid: str) -> CheckResult:
        token = tokens[tid]
        async with gate:
            try:
                cred = await client.validate(token)
            except GatewayError as exc:
                return CheckResult(tid, mask(token), "unknown", f"check failed: {exc.message}")
        if cred is None:
            reason = "the upstream answered 401/403: the token is dead"
            await pool.verdict(tid, False, reason)
            return CheckResult(tid, mask(token), "dead", reason)
        if cred.role != "user":
            reason = f"role is {cred.role!r}: a guest token, not a user account"
            await pool.verdict(tid, False, reason)
            return CheckResult(tid, mask(token), "dead", reason)
        reason = ""
        if cred.token and cred.token != token:
            new_id = await rotation.replace(token, cred.token)
            if new_id is None:  # another check swapped or removed it first
                return CheckResult(tid, mask(token), "unknown", "replaced meanwhile")
            reason = f"rotated by the upstream: now {mask(cred.token)} ({new_id})"
            logger.info("token {} {}", mask(token), reason)
            tid, token = new_id, cred.token
        await pool.verdict(tid, True, reason, cred.role, cred.user_id, cred.name)
        return CheckResult(tid, mask(token), "alive", reason)

    return list(await asyncio.gather(*(check(tid) for tid in chosen)))

"""The Redis connection: the real one from ``REDIS_URL``, or an embedded fakeredis.

Owns ``connect``. Timeouts are short and there is no hidden retry on purpose
(``REDIS_TIMEOUT``, 0.5 s): a Redis that stops answering costs a request half a second and a
clear 503, not a hang, and the same client works again as soon as Redis is back. RESP2 is
used deliberately: Lua replies read the same on Redis 7, newer servers and fakeredis. Create
the client inside each worker process, after any fork.
"""

import fakeredis
from loguru import logger
from redis.asyncio import Redis

__all__ = ["connect"]


def connect(url: str, timeout: float) -> Redis:
    if not url:
        logger.info(
            "REDIS_URL is not set: shared state lives in an embedded fakeredis, in this one "
            "process (set REDIS_URL to share a pool between processes and replicas)"
        )
        return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
    return Redis.from_url(
        url,
        decode_responses=True,
        protocol=2,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=None,
        health_check_interval=0,
        client_name="zai-gateway",
    )

"""The Redis connection: the real one from ``REDIS_URL``, or an embedded fakeredis.

Owns ``connect``. Timeouts are short and there is no hidden retry on purpose
(``REDIS_TIMEOUT``, 0.5 s): a Redis that stops answering costs a request half a second and a
clear 503, not a hang, and the same client works again as soon as Redis is back. RESP2 is
used deliberately: Lua replies read the same on Redis 7, newer servers and fakeredis. Create
the client inside each worker process, after any fork.
"""

from loguru import logger
from redis.asyncio import BlockingConnectionPool, Redis

__all__ = ["connect"]


def connect(url: str, timeout: float) -> Redis:
    if not url:
        logger.info(
            "REDIS_URL is not set: shared state lives in an embedded fakeredis, in this one "
            "process (set REDIS_URL to share a pool between processes and replicas)"
        )
        import fakeredis  # only when embedded: it costs memory a real deployment need not pay

        return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
    # A bounded pool that waits (up to the timeout) for a free connection: under a burst a
    # command queues briefly instead of failing with "Too many connections".
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=_CONNECTIONS,
        timeout=timeout,
        decode_responses=True,
        protocol=2,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=None,
        health_check_interval=0,
        client_name="zai-gateway",
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


_CONNECTIONS = 64  # per worker process: commands are short, a few dozen connections suffice

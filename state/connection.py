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


def connect(url: str, timeout: float, max_connections: int = 64) -> Redis:
    if not url:
        logger.info(
            "REDIS_URL is not set: shared state lives in an embedded fakeredis, in this one "
            "process (set REDIS_URL to share a pool between processes and replicas)"
        )
        import fakeredis  # only when embedded: it costs memory a real deployment need not pay

        return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
    # A bounded pool (REDIS_MAX_CONNECTIONS) where a command waits for a free connection
    # instead of failing with "Too many connections". That wait is queueing in this process,
    # not Redis failing to answer, so it is not bounded by REDIS_TIMEOUT: a busy worker holds a
    # connection from a command's send until its loop gets round to reading the reply, and 200
    # requests in flight waited past 0.5 s for one (503 "No connection available"). It cannot
    # hang either: each command that holds a connection gives up after REDIS_TIMEOUT, so a
    # waiter's turn comes. More connections did not help: under such a burst the new
    # connections timed out being opened.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=max(_QUEUE_WAIT, timeout),
        decode_responses=True,
        protocol=2,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=None,
        health_check_interval=0,
        client_name="zai-gateway",
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


_QUEUE_WAIT = 10.0  # seconds a command may wait for a free connection of the pool

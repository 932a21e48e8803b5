"""Which gateway processes are alive: registration with a heartbeat that expires.

Owns ``Instances``. Each worker process registers itself (host, pid, version, start time,
in-flight count) in ``<p>instance:<id>`` with a TTL and in the ``<p>instances`` zset scored
by its deadline, and refreshes both every third of ``INSTANCE_TTL``. A stopped process
removes itself; a killed one disappears when its TTL runs out (the hash expires, the zset
entry is pruned by the next listing), so nothing needs a manual fix.
"""

import os
import socket
import time
import uuid
from typing import cast

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from state.keys import Keys

__all__ = ["Instances", "new_instance_id"]


def new_instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Instances:
    """This process's registration, and the listing of all live ones."""

    def __init__(
        self, redis: Redis, keys: Keys, instance_id: str, ttl: float, version: str
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.id = instance_id
        self.ttl = ttl
        self.info: dict[FieldT, EncodableT] = {
            "id": instance_id,
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "version": version,
            "started": str(int(time.time())),
        }

    def __repr__(self) -> str:
        return f"<Instances {self.id} ttl={self.ttl:g}s>"

    async def heartbeat(self, inflight: int) -> None:
        key = self.keys.instance(self.id)
        ttl_ms = int(self.ttl * 1000)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key, mapping={**self.info, "inflight": inflight, "heartbeat": int(time.time())}
            )
            pipe.pexpire(key, ttl_ms)
            pipe.zadd(self.keys.instances, {self.id: int(time.time() * 1000) + ttl_ms})
            await pipe.execute()

    async def deregister(self) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.instance(self.id))
            pipe.zrem(self.keys.instances, self.id)
            await pipe.execute()

    async def live(self) -> list[dict[str, str]]:
        now_ms = int(time.time() * 1000)
        await self.redis.zremrangebyscore(self.keys.instances, "-inf", now_ms)
        ids = await self.redis.zrange(self.keys.instances, 0, -1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for iid in ids:
                pipe.hgetall(self.keys.instance(cast(str, iid)))
            rows = await pipe.execute()
        return [row for row in rows if row]

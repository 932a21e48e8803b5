"""The Redis connection: the real one from ``REDIS_URL``, or an embedded fakeredis.

Owns ``connect`` and ``sentinel_params``. Timeouts are short and there is no hidden retry on
purpose (``REDIS_TIMEOUT``, 0.5 s): a Redis that stops answering costs a request half a second
and a clear 503, not a hang, and the same client works again as soon as Redis is back. RESP2
is used deliberately: Lua replies read the same on Redis 7, newer servers and fakeredis.
Create the client inside each worker process, after any fork.

``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/<service>[/<db>]`` asks
those sentinels (port 26379 by default) which server is the master of ``<service>``; the
password is the master's. ``rediss+sentinel://`` speaks TLS to the sentinels and to the
master alike (Redis's ``tls-replication`` set-up, where one port serves both). A new
connection asks again, and a connection that fails (the master died) or finds itself on a
demoted master is dropped, so after a failover the next request reaches the new master,
with the same fast-fail timeouts in between; a sentinel that fails is passed over at once.

``redis+cluster://[[user]:password@]host[:port][,host[:port]...]`` (``rediss+cluster://`` for
TLS) is a Redis Cluster, found from those nodes (port 6379 by default); so is a
``redis://`` or ``rediss://`` URL given with ``cluster=True`` (``REDIS_CLUSTER=true``: a managed
cluster's one configuration endpoint). Nothing else changes there: ``state.keys`` gives every
name a hash tag on every kind of Redis, so the scripts and transactions that touch several
keys run on one node, as they do on a single Redis.

Every TLS scheme (``rediss://``, ``rediss+sentinel://``, ``rediss+cluster://``) checks the
server's certificate and host name against ``ca_file`` (``REDIS_TLS_CA_FILE``) when it is
given, else against the system's trusted authorities.
"""

import contextlib
import weakref
from collections.abc import Mapping
from typing import Any, TypedDict, cast

from loguru import logger
from redis.asyncio import BlockingConnectionPool, Connection, Redis, SSLConnection
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.typing import EncodableT, FieldT

__all__ = [
    "CLUSTER_SCHEMES",
    "SENTINEL_SCHEMES",
    "Fields",
    "cluster_params",
    "connect",
    "is_cluster",
    "is_sentinel",
    "sentinel_params",
]

# Every client decodes its replies (decode_responses=True), so what redis-py types as
# ``bytes | str`` is a ``str`` here: the readers say so with ``typing.cast``. ``Fields`` is
# what ``hset(mapping=...)`` takes; its key type is invariant, so a ``dict[str, str]`` is cast.
Fields = Mapping[FieldT, EncodableT]

SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
_SENTINEL_PORT = 26379
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
_REDIS_PORT = 6379


class _Auth(TypedDict):
    """The credentials a ``redis+cluster://`` URL carries, as the client's keywords."""

    username: str | None
    password: str | None


class _MasterAuth(_Auth):
    """The master's options a ``redis+sentinel://`` URL carries: its credentials and db."""

    db: int


def is_cluster(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEMES)


def is_sentinel(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEMES)


def _tls(url: str, ca_file: str) -> dict[str, str]:
    """The connection options of TLS for ``url``: none on a plain scheme (redis-py's plain
    connection takes no ``ssl_*`` option)."""
    if not url.startswith(("rediss://", "rediss+")):
        return {}
    return {"ssl_ca_certs": ca_file} if ca_file else {}


def connect(
    url: str,
    timeout: float,
    max_connections: int = 64,
    cluster: bool = False,
    ca_file: str = "",
) -> Redis:
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
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": max(_QUEUE_WAIT, timeout),
        "decode_responses": True,
        "protocol": 2,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": None,
        "health_check_interval": 0,
        "client_name": "zai-gateway",
        **_tls(url, ca_file),
    }
    if is_sentinel(url):
        return _sentinel_master(url, timeout, options)
    if cluster or is_cluster(url):
        return _cluster(url, options)
    pool = BlockingConnectionPool.from_url(url, **options)
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


_QUEUE_WAIT = 10.0  # seconds a command may wait for a free connection of the pool


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The master's connections, found through the sentinels, bounded and waiting like the
    plain pool's."""


class _SentinelMaster(Redis):
    """The master's client; closing it also closes the connections to the sentinels."""

    sentinels: Sentinel | None = None  # not "sentinel": that is Redis's SENTINEL command

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            await self.sentinels.aclose()


def _sentinel_master(url: str, timeout: float, options: dict[str, Any]) -> Redis:
    hosts, service, auth = sentinel_params(url)
    # The sentinels get the same short timeouts and TLS; they never see the master's password.
    tls = {"ssl": True} if url.startswith("rediss+") else {}
    ssl = {name: value for name, value in options.items() if name.startswith("ssl_")}
    asked = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "protocol": 2,
        "retry": None,  # as for the master: a sentinel that does not answer is passed over at once
    }
    sentinel = Sentinel(hosts, sentinel_kwargs={**asked, **tls, **ssl})
    logger.info("Redis master of {!r} from sentinels {}", service, hosts)
    client: _SentinelMaster = sentinel.master_for(
        service,
        redis_class=_SentinelMaster,
        connection_pool_class=_BlockingSentinelPool,
        **options,
        **tls,
        **auth,
    )
    client.sentinels = sentinel
    return client


class _ClusterConnection(Connection):
    """A node's connection that says so when it was closed under a command.

    After a failover redis-py's cluster client disconnects a node's idle connections
    (``disconnect_free_connections``) while they stay on the idle list, so another command
    can take one and find its writer gone in the middle of sending: an ``AttributeError``
    that no caller expects (a 500, seen under load in ``tests/test_cluster.py``). As a
    connection error it is what it is: the client refreshes its slot table and retries once.
    """

    async def _send_packed_command(self, command: object) -> None:
        if self._writer is None:
            raise RedisConnectionError("the connection was closed under this command")
        await super()._send_packed_command(command)  # type: ignore[arg-type]


class _SSLClusterConnection(_ClusterConnection, SSLConnection):
    pass


class _Cluster(RedisCluster):
    """A cluster client whose ``aclose`` also closes the connections of nodes it dropped.

    After a failover redis-py replaces the node objects of the old topology and closes only
    the nodes it still knows, so a connection to a node it dropped stays open until the
    garbage collector finds it (a ResourceWarning at a random later point). Each client has
    a connection class of its own (``made`` remembers what it made): ``aclose`` ends them all.
    """

    made: "weakref.WeakSet[Connection]"

    async def aclose(self) -> None:
        await super().aclose()
        for conn in list(self.made):
            with contextlib.suppress(Exception):
                await conn.disconnect()


def _tracked(base: type[_ClusterConnection]) -> tuple[type[_ClusterConnection], Any]:
    made: weakref.WeakSet[Connection] = weakref.WeakSet()

    class Tracked(base):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.add(self)

    return Tracked, made


def _cluster(url: str, options: dict[str, Any]) -> Redis:
    nodes, auth = cluster_params(url)
    logger.info("Redis Cluster from nodes {}", nodes)
    # Its pools are per node and do not wait for a free connection: allow more of them.
    # ``timeout`` is the blocking pool's wait, which a cluster has not.
    options = {k: v for k, v in options.items() if k != "timeout"}
    options["max_connections"] = max(options["max_connections"], 256)
    # One retry, at once, after a MOVED/ASK or a node failing over: the cluster's own
    # redirections; a Redis that does not answer still fails within REDIS_TIMEOUT.
    options["retry"] = Retry(NoBackoff(), 1)
    tls = url.startswith("rediss")
    client = _Cluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        ssl=tls,
        **options,
        **auth,
    )
    # RedisCluster takes no connection class: set it where its nodes are made from
    connection_class, client.made = _tracked(_SSLClusterConnection if tls else _ClusterConnection)
    client.nodes_manager.connection_kwargs["connection_class"] = connection_class
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = connection_class
    # The state code uses only commands, scripts and pipelines a cluster client has too.
    return cast(Redis, client)


def cluster_params(url: str) -> tuple[list[tuple[str, int]], _Auth]:
    """``(nodes, auth)`` of a ``redis+cluster://`` URL.

    >>> cluster_params("redis+cluster://:pw@a:7000,b")
    ([('a', 7000), ('b', 6379)], {'password': 'pw', 'username': None})
    """
    rest = url.split("://", 1)[1]
    netloc = rest.partition("/")[0]
    hostlist, username, password = _userinfo(netloc)
    nodes = [_host(part, _REDIS_PORT) for part in hostlist.split(",") if part]
    if not nodes:
        raise ValueError("needs at least one node: redis+cluster://host:6379[,host:6379...]")
    return nodes, {"password": password, "username": username}


def _userinfo(netloc: str) -> tuple[str, str | None, str | None]:
    """(hosts, username, password) of ``[[user]:password@]hosts``."""
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username, password = (user or None, secret or None) if colon else (None, user or None)
    return hostlist, username, password


def sentinel_params(url: str) -> tuple[list[tuple[str, int]], str, _MasterAuth]:
    """``(sentinels, service, master options)`` of a ``redis+sentinel://`` URL.

    >>> sentinel_params("redis+sentinel://a:26380,b/gw")
    ([('a', 26380), ('b', 26379)], 'gw', {'db': 0, 'password': None, 'username': None})
    """
    rest = url.split("://", 1)[1]
    netloc, _, path = rest.partition("/")
    hostlist, username, password = _userinfo(netloc)
    hosts = [_host(part, _SENTINEL_PORT) for part in hostlist.split(",") if part]
    service, _, db = path.partition("/")
    if not hosts or not service:
        raise ValueError("needs sentinels and a service: redis+sentinel://host:26379/<service>")
    if db and not db.isdigit():
        raise ValueError("the database after the service must be a number")
    return hosts, service, {"db": int(db or 0), "password": password, "username": username}


def _host(part: str, default_port: int) -> tuple[str, int]:
    if part.startswith("["):  # [::1]:26379
        host, _, port = part[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = part.partition(":")
    if port and not port.isdigit():
        raise ValueError(f"bad port in {part!r}")
    return host, int(port or default_port)

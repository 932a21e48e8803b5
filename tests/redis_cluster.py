"""A real Redis Cluster for the tests: three masters, each a ``redis-server`` (or the packaged
``valkey-server``) with ``cluster-enabled`` on a free loopback port, the 16384 slots split
between them, stopped after.

Owns ``ClusterSet``. ``url`` is the gateway's ``REDIS_URL`` for it (``redis+cluster://``
naming every node). The slots are assigned and the nodes introduced with plain commands
(``CLUSTER ADDSLOTSRANGE``, ``CLUSTER MEET``), so no ``redis-cli --cluster`` is needed.
"""

import time

import redis

from tests.redis_server import RedisServer, cli_reply, free_port

_RANGES = ((0, 5460), (5461, 10922), (10923, 16383))


class ClusterSet:
    def __init__(self) -> None:
        # The cluster bus gets a free port of its own: by default it is the port + 10000,
        # beyond 65535 for a free port above 55535.
        self.bus_ports = [free_port() for _ in _RANGES]
        self.nodes = [
            RedisServer(
                extra=(
                    "--cluster-enabled", "yes",
                    "--cluster-node-timeout", "2000",
                    "--cluster-port", str(bus),
                )
            )
            for bus in self.bus_ports
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> "ClusterSet":
        for node, (low, high) in zip(self.nodes, _RANGES, strict=True):
            node.start()
            node.cli("CLUSTER", "ADDSLOTSRANGE", str(low), str(high))
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.cli("CLUSTER", "MEET", "127.0.0.1", str(first.port), str(self.bus_ports[0]))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(self._ready(node) for node in self.nodes):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the test cluster did not come up within 30 s")

    def cli(self, *args: str) -> str:
        """A command about one key, sent to the node that holds it (others answer MOVED)."""
        for node in self.nodes:
            try:
                return node.cli(*args)
            except redis.exceptions.MovedError:
                continue
        raise RuntimeError(f"no node of the cluster holds the key of {args}")

    @staticmethod
    def _ready(node: RedisServer) -> bool:
        info = cli_reply(node.port, "CLUSTER", "INFO")
        return "cluster_state:ok" in info and "cluster_known_nodes:3" in info

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

"""A real Redis Cluster for the tests: three masters, each a ``redis-server`` (or the packaged
``valkey-server``) with ``cluster-enabled`` on a free loopback port, the 16384 slots split
between them, stopped after; with ``replicas=1``, one replica per master as well.

Owns ``ClusterSet``. ``url`` is the gateway's ``REDIS_URL`` for it (``redis+cluster://``
naming every node). The slots are assigned and the nodes introduced with plain commands
(``CLUSTER ADDSLOTSRANGE``, ``CLUSTER MEET``, ``CLUSTER REPLICATE``), so no
``redis-cli --cluster`` is needed. ``holder`` names the master of a key's slot, ``replica_of``
its replica,
``failover`` has that replica take over (``CLUSTER FAILOVER``), ``kill`` SIGKILLs a node (its
replica is promoted by the others after ``cluster-node-timeout``), and ``wait_master`` returns
once every node that still runs sees a given node as a master with the slots.
"""

import signal
import time

import redis

from tests.redis_server import RedisServer, cli_reply, free_port

_RANGES = ((0, 5460), (5461, 10922), (10923, 16383))


class ClusterSet:
    def __init__(self, replicas: int = 0, node_timeout_ms: int = 2000) -> None:
        # The cluster bus gets a free port of its own: by default it is the port + 10000,
        # beyond 65535 for a free port above 55535.
        count = len(_RANGES) * (1 + replicas)
        self.bus_ports = [free_port() for _ in range(count)]
        self.nodes = [
            RedisServer(
                extra=(
                    "--cluster-enabled", "yes",
                    "--cluster-node-timeout", str(node_timeout_ms),
                    "--cluster-port", str(bus),
                )
            )
            for bus in self.bus_ports
        ]  # fmt: skip
        self.masters = self.nodes[: len(_RANGES)]
        # replicas[i] follows masters[i % 3]
        self.replicas = self.nodes[len(_RANGES) :]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> "ClusterSet":
        for node in self.nodes:
            node.start()
        for node, (low, high) in zip(self.masters, _RANGES, strict=True):
            node.cli("CLUSTER", "ADDSLOTSRANGE", str(low), str(high))
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.cli("CLUSTER", "MEET", "127.0.0.1", str(first.port), str(self.bus_ports[0]))
        self._wait(lambda: all(self._known(node) for node in self.nodes), "meet")
        for index, replica in enumerate(self.replicas):
            master = self.masters[index % len(self.masters)]
            replica.cli("CLUSTER", "REPLICATE", self.node_id(master))
        self._wait(lambda: all(self._ready(node) for node in self.nodes), "set-up")
        return self

    def cli(self, *args: str) -> str:
        """A command about one key, sent to the node that holds it (others answer MOVED)."""
        for node in self.masters:
            try:
                return node.cli(*args)
            except redis.exceptions.MovedError:
                continue
        raise RuntimeError(f"no node of the cluster holds the key of {args}")

    @staticmethod
    def node_id(node: RedisServer) -> str:
        return node.cli("CLUSTER", "MYID").strip()

    def running(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.proc is not None]

    def holder(self, key: str) -> RedisServer:
        """The master that holds ``key``'s slot now."""
        alive = self.running()
        slot = int(alive[0].cli("CLUSTER", "KEYSLOT", key))
        for node in alive:
            if "role:master" in node.cli("INFO", "replication"):
                ranges = node.command("CLUSTER", "SLOTS")
                assert isinstance(ranges, list)
                for low, high, owner, *_ in ranges:
                    if low <= slot <= high and owner[1] == node.port:
                        return node
        raise RuntimeError(f"no master holds slot {slot}")

    def replica_of(self, master: RedisServer) -> RedisServer:
        wanted = self.node_id(master)
        for node in self.running():
            info = node.cli("INFO", "replication")
            if "role:slave" in info and f"master_port:{master.port}" in info:
                return node
        raise RuntimeError(f"master {wanted} has no replica")

    def failover(self, replica: RedisServer) -> None:
        replica.cli("CLUSTER", "FAILOVER")

    def kill(self, node: RedisServer) -> None:
        assert node.proc is not None
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)
        node.proc = None

    def wait_master(self, node: RedisServer, timeout: float = 30) -> float:
        """Seconds until every running node sees ``node`` as a master of the cluster."""
        started = time.monotonic()
        self._wait(lambda: self._promoted(node), "failover", timeout)
        return time.monotonic() - started

    def _promoted(self, node: RedisServer) -> bool:
        if "role:master" not in node.cli("INFO", "replication"):
            return False
        wanted = self.node_id(node)
        for other in self.running():
            for line in other.cli("CLUSTER", "NODES").splitlines():
                if line.startswith(wanted) and "master" not in line.split()[2]:
                    return False
        return "cluster_state:ok" in node.cli("CLUSTER", "INFO")

    def _known(self, node: RedisServer) -> bool:
        info = cli_reply(node.port, "CLUSTER", "INFO")
        return f"cluster_known_nodes:{len(self.nodes)}" in info

    def _ready(self, node: RedisServer) -> bool:
        info = cli_reply(node.port, "CLUSTER", "INFO")
        if "cluster_state:ok" not in info or not self._known(node):
            return False
        if node in self.replicas:
            return "master_link_status:up" in node.cli("INFO", "replication")
        return True

    @staticmethod
    def _wait(ready, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.1)
        raise TimeoutError(f"the test cluster's {what} did not happen within {timeout} s")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

"""A private three-node NATS cluster on loopback, each node with its MQTT gateway, for the
demo, the tests and the fleet benchmark.

Like :mod:`edge.broker` this is tooling: the agent never starts a broker. The nodes are
``nats-server`` processes on free 127.0.0.1 ports, routed to each other as one cluster,
with JetStream (store dirs in one temporary directory) so the MQTT gateway's state (QoS 1
sessions, retained messages) is kept in streams replicated on all three nodes
(``stream_replicas: 3``) and survives the loss of one. Each node is stopped by its pid.
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge.broker import (
    BrokerUnavailable,
    PrivateBroker,
    find_binary,
    free_port,
    stop_by_pid,
    wait_for_port,
)

_SEARCH = ("/usr/sbin/nats-server", "/usr/local/bin/nats-server", "/usr/bin/nats-server")
CLUSTER_NAME = "backbeat"


def find_nats_server() -> str:
    """Path of the nats-server binary; raises BrokerUnavailable with how to install it."""
    return find_binary("nats-server", _SEARCH, "nats-server")


@dataclass
class NatsNode:
    """One ``nats-server`` of the cluster: its ports, store and process."""

    name: str
    client_port: int
    route_port: int
    mqtt_port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The node's MQTT gateway, as an agent's ``broker.url`` names it."""
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def pid(self) -> int:
        return -1 if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        path = self.workdir / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the node by its pid (SIGKILL after ``timeout``)."""
        if self.process is not None:
            stop_by_pid(self.process, sig, timeout)

    def kill(self) -> None:
        """The node dies at once (SIGKILL): no goodbye to its clients or its peers."""
        self.stop(signal.SIGKILL)


def _node_conf(node: NatsNode, peers: list[NatsNode]) -> str:
    routes = ", ".join(f"nats-route://127.0.0.1:{p.route_port}" for p in peers)
    store = node.workdir / node.name
    return (
        f"server_name: {node.name}\n"
        f"listen: 127.0.0.1:{node.client_port}\n"
        f'log_file: "{node.workdir / (node.name + ".log")}"\n'
        f'jetstream {{ store_dir: "{store}", max_memory_store: 64MB, max_file_store: 256MB }}\n'
        f"cluster {{ name: {CLUSTER_NAME}, listen: 127.0.0.1:{node.route_port},"
        f" routes: [{routes}] }}\n"
        # The gateway's sessions and retained messages live in streams: three replicas, so
        # a node's death loses none of them.
        f"mqtt {{ listen: 127.0.0.1:{node.mqtt_port}, stream_replicas: 3 }}\n"
    )


def _spawn(binary: str, node: NatsNode) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [binary, "-c", str(node.workdir / f"{node.name}.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C in the terminal is the demo's to handle
    )


def mqtt_ready(port: int, timeout: float = 3.0) -> bool:
    """Whether the MQTT gateway on ``port`` accepts a CONNECT (a CONNACK with code 0).

    The port opens before JetStream has a leader for the gateway's streams; until then the
    gateway refuses or drops the connection, so an open port is not enough."""
    # MQTT 3.1.1 CONNECT, clean session, a fresh client id (a reused one would be a
    # session takeover, which a cluster settles slowly).
    client_id = f"backbeat-probe-{secrets.token_hex(4)}".encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x05" + len(client_id).to_bytes(2, "big") + client_id
    packet = bytes([0x10, len(body)]) + body
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(packet)
            answer = sock.recv(4)
    except OSError:
        return False
    return len(answer) == 4 and answer[0] == 0x20 and answer[3] == 0


#: The streams NATS's MQTT gateway keeps its state in (sessions, QoS 1 messages, retained).
MQTT_STREAMS = ("$MQTT_sess", "$MQTT_msgs", "$MQTT_rmsgs")


def js_request(port: int, subject: str, timeout: float = 5.0) -> dict[str, object]:
    """One JetStream API request over the plain NATS protocol (no client library): its
    JSON answer. Raises OSError or ValueError when there is none."""
    inbox = f"_INBOX.backbeat.{secrets.token_hex(6)}"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(
            b'CONNECT {"verbose":false,"pedantic":false}\r\n'
            + f"SUB {inbox} 1\r\nPUB {subject} {inbox} 0\r\n\r\n".encode()
        )
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            start = data.find(b"MSG " + inbox.encode())
            if start < 0:
                continue
            header_end = data.find(b"\r\n", start)
            if header_end < 0:
                continue
            size = int(data[start:header_end].split()[-1])
            body = data[header_end + 2 : header_end + 2 + size]
            if len(body) == size:
                answer = json.loads(body)
                if not isinstance(answer, dict):
                    raise ValueError(f"{subject}: not a JSON object: {body[:200]!r}")
                return answer
    raise ValueError(f"{subject}: no answer in {timeout:g} s")


@dataclass
class NatsCluster(PrivateBroker):
    """Three running nodes. Use as a context manager or call ``close()``."""

    nodes: list[NatsNode]
    workdir: Path
    binary: str
    _owned_dir: bool = field(default=True, repr=False)

    @property
    def urls(self) -> list[str]:
        """Every node's MQTT URL, in node order (what an agent's ``broker.url`` lists)."""
        return [node.url for node in self.nodes]

    def node_on(self, port: int) -> NatsNode:
        """The node whose MQTT gateway listens on ``port``."""
        for node in self.nodes:
            if node.mqtt_port == port:
                return node
        raise KeyError(port)

    def wait_ready(self, timeout: float = 30.0, nodes: list[NatsNode] | None = None) -> bool:
        """Wait until every (given) node's MQTT gateway takes a CONNECT."""
        deadline = time.monotonic() + timeout
        pending = list(self.nodes if nodes is None else nodes)
        while pending and time.monotonic() < deadline:
            pending = [n for n in pending if not mqtt_ready(n.mqtt_port)]
            if pending:
                time.sleep(0.2)
        return not pending

    def stream_leaders(self) -> dict[str, str]:
        """The node name leading each of the MQTT gateway's streams (asked of a live node)."""
        live = next(n for n in self.nodes if n.running)
        leaders = {}
        for stream in MQTT_STREAMS:
            info = js_request(live.client_port, f"$JS.API.STREAM.INFO.{stream}")
            cluster = info.get("cluster")
            if isinstance(cluster, dict) and isinstance(cluster.get("leader"), str):
                leaders[stream] = cluster["leader"]
        return leaders

    def move_leaders_off(self, node: NatsNode, timeout: float = 20.0) -> bool:
        """Have ``node`` step down from leading any of the gateway's streams (the others
        elect a new leader), so that killing it next costs no JetStream election: while
        one runs (seconds) the gateway on every node refuses sessions. Whether it worked."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                led = [s for s, leader in self.stream_leaders().items() if leader == node.name]
                if not led and len(self.stream_leaders()) == len(MQTT_STREAMS):
                    return True
                for stream in led:
                    js_request(node.client_port, f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}")
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        return False

    def restart(self, node: NatsNode) -> None:
        """Start a stopped node again, on its ports and with its store."""
        node.stop()
        node.process = _spawn(self.binary, node)

    def logs(self) -> str:
        return "\n".join(f"--- {n.name}\n{n.log()[-3000:]}" for n in self.nodes)

    def stop_all(self) -> None:
        for node in self.nodes:
            node.stop()


def start_nats_cluster(
    size: int = 3, workdir: Path | None = None, ready_timeout: float = 30.0
) -> NatsCluster:
    """Start ``size`` routed nats-server nodes on 127.0.0.1 and wait until every MQTT
    gateway answers. Raises BrokerUnavailable if nats-server is missing or the cluster
    does not form in ``ready_timeout`` (with the nodes' logs)."""
    binary = find_nats_server()
    owned = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="backbeat-nats-")) if workdir is None else workdir
    nodes = [
        NatsNode(f"n{i + 1}", free_port(), free_port(), free_port(), workdir) for i in range(size)
    ]
    cluster = NatsCluster(nodes, workdir, binary, _owned_dir=owned)
    try:
        for node in nodes:
            peers = [p for p in nodes if p is not node]
            (workdir / f"{node.name}.conf").write_text(_node_conf(node, peers), encoding="utf-8")
        for node in nodes:
            node.process = _spawn(binary, node)
        for node in nodes:
            if not wait_for_port(node.client_port, 10):
                raise BrokerUnavailable(f"nats-server {node.name} did not start\n{node.log()}")
        if not cluster.wait_ready(ready_timeout):
            raise BrokerUnavailable(
                f"the NATS cluster's MQTT gateways did not come up in {ready_timeout:g} s\n"
                + cluster.logs()
            )
    except BaseException:
        cluster.close()
        raise
    return cluster

"""The processes of a chaos run: Redis, the replicas (each in its network namespace) and
the worker processes, each of which can be killed, stopped and started again."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from netns import REDIS_HOST, ReplicaNet

GRPC_PORT = 50051
REDIS_PORT = 6379


def wait_until(what: str, ready: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not within {seconds} s")


def answers(host: str, port: int, probe: bytes = b"", expect: bytes = b"") -> bool:
    """Whether ``host:port`` accepts a connection (and answers ``probe`` with ``expect``)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as conn:
            if probe:
                conn.sendall(probe)
                return conn.recv(64).startswith(expect)
            return True
    except OSError:
        return False


class Process:
    """A child process that can be killed, stopped and started again with the same
    command; its stderr goes to ``log`` (appended to across restarts)."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.stopped = False
        #: When it was killed (the end of whatever ran in it).
        self.killed_at: list[float] = []

    def spawn(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
            self.killed_at.append(time.time())
        self.stopped = False

    def pause(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)
            self.stopped = True

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self.stopped = False


class Redis(Process):
    """redis-server with AOF, ``appendfsync always``: a ``kill -9`` loses nothing it
    acknowledged, so every write a client saw answered must survive a restart."""

    def __init__(self, work: Path) -> None:
        argv = [
            "redis-server",
            "--bind",
            f"{REDIS_HOST} 127.0.0.1",
            "--port",
            str(REDIS_PORT),
            # Replicas connect from their namespaces, not from loopback; nothing else can
            # reach this namespace.
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(work),
            "--loglevel",
            "warning",
        ]
        super().__init__("redis", argv, work / "redis.log")
        self.url = f"redis://{REDIS_HOST}:{REDIS_PORT}"

    def start(self) -> None:
        self.spawn()
        wait_until(
            "redis-server answering PING",
            lambda: answers(REDIS_HOST, REDIS_PORT, b"PING\r\n", b"+PONG"),
        )


class RedisCluster:
    """A Redis Cluster of three masters, each a redis-server with AOF (``appendfsync
    always``) on ``REDIS_HOST`` (ports 6379-6381, cluster bus 16379-16381), joined by
    ``redis-cli --cluster create``. The ``redis`` fault kills one master (``kill``) and
    starts it again (``start``): its slots are unavailable meanwhile, and it comes back
    with everything it acknowledged (no replicas, so no failover loses a write)."""

    PORTS = (REDIS_PORT, REDIS_PORT + 1, REDIS_PORT + 2)

    def __init__(self, work: Path) -> None:
        self.nodes: list[Process] = []
        for port in self.PORTS:
            directory = work / f"redis-{port}"
            directory.mkdir(parents=True, exist_ok=True)
            argv = [
                "redis-server",
                "--bind",
                f"{REDIS_HOST} 127.0.0.1",
                "--port",
                str(port),
                "--protected-mode",
                "no",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-announce-ip",
                REDIS_HOST,
                "--cluster-node-timeout",
                "2000",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(directory),
                "--loglevel",
                "warning",
            ]
            self.nodes.append(Process(f"redis-{port}", argv, work / f"redis-{port}.log"))
        self.created = False
        self.url = "redis+cluster://" + ",".join(f"{REDIS_HOST}:{port}" for port in self.PORTS)
        self.next_victim = 0

    @property
    def killed_at(self) -> list[float]:
        return sorted(at for node in self.nodes for at in node.killed_at)

    @staticmethod
    def _pong(port: int) -> Callable[[], bool]:
        return lambda: answers(REDIS_HOST, port, b"PING\r\n", b"+PONG")

    def _cluster_ok(self) -> bool:
        info = subprocess.run(
            ["redis-cli", "-h", REDIS_HOST, "-p", str(self.PORTS[0]), "cluster", "info"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return "cluster_state:ok" in info

    def start(self) -> None:
        """Starts every node that is not running; the first time, creates the cluster."""
        for node, port in zip(self.nodes, self.PORTS, strict=True):
            if not node.alive:
                node.spawn()
                wait_until(f"redis-server {port} answering PING", self._pong(port))
        if not self.created:
            subprocess.run(
                ["redis-cli", "--cluster", "create"]
                + [f"{REDIS_HOST}:{port}" for port in self.PORTS]
                + ["--cluster-yes"],
                capture_output=True,
                check=True,
            )
            self.created = True
        wait_until("the Redis Cluster ok", self._cluster_ok)

    def kill(self) -> None:
        """Kills one master (in turn), or every node at the end of the run."""
        victim = self.nodes[self.next_victim % len(self.nodes)]
        self.next_victim += 1
        victim.kill()

    def kill_all(self) -> None:
        for node in self.nodes:
            node.kill()


class Replica(Process):
    """``reinsd`` in its own network namespace, on Redis, serving kind ``chaos``."""

    def __init__(self, index: int, reinsd: Path, redis_url: str, lease: float, work: Path) -> None:
        self.net = ReplicaNet(index)
        self.id = f"r{index}"
        argv = self.net.command(
            str(reinsd),
            "--listen",
            f"{self.net.address}:{GRPC_PORT}",
            "--replica-id",
            self.id,
            "--redis-url",
            redis_url,
            "--lease-ttl",
            f"{int(lease * 1000)}ms",
            "--shutdown-grace",
            "1s",
            "--default-grace",
            "3s",
            "--worker-kind",
            "chaos",
            "--watch-heartbeat",
            "1s",
        )
        super().__init__(self.id, argv, work / f"{self.id}.log")

    @property
    def address(self) -> str:
        return f"{self.net.address}:{GRPC_PORT}"

    def start(self) -> None:
        self.spawn()
        wait_until(f"replica {self.id} listening", lambda: answers(self.net.address, GRPC_PORT))


class WorkerProcess(Process):
    """A chaos worker (``worker.py``) reaching the replicas through its relay port."""

    def __init__(self, index: int, relay_port: int, concurrency: int, work: Path) -> None:
        self.runs = work / f"w{index}.jsonl"
        argv = [
            sys.executable,
            str(Path(__file__).with_name("worker.py")),
            "--server",
            f"127.0.0.1:{relay_port}",
            "--name",
            f"w{index}",
            "--log",
            str(self.runs),
            "--concurrency",
            str(concurrency),
        ]
        super().__init__(f"w{index}", argv, work / f"w{index}.log")

    def start(self) -> None:
        self.spawn()

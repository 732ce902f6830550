"""The faults of a chaos run, injected one at a time at random moments spread over the
run, each recorded with its start and end (the checker excuses a replica for what it could
not know while it was cut off):

- ``kill``: ``kill -9`` a replica, start it again (same id and address) after a moment;
- ``stop``: SIGSTOP a replica for 1.3–2.5 leases, then SIGCONT (the others settle its
  tasks meanwhile; its late writes must be refused);
- ``partition``: cut a replica off from Redis (clients still reach it) for 0.3–3 leases;
- ``redis``: ``kill -9`` Redis (AOF, ``appendfsync always``), start it again;
- ``worker-drop``: reset a worker's connections (its process reconnects);
- ``worker-kill``: ``kill -9`` a worker process, start it again.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence

from cluster import Redis, RedisCluster, Replica, WorkerProcess
from history import Fault
from relay import Relay

KINDS = ("kill", "stop", "partition", "redis", "worker-drop", "worker-kill")


class Faults:
    def __init__(
        self,
        rng: random.Random,
        lease: float,
        redis: Redis | RedisCluster,
        replicas: Sequence[Replica],
        workers: Sequence[WorkerProcess],
        relays: Sequence[Relay],
        kinds: Sequence[str],
    ) -> None:
        self.rng = rng
        self.lease = lease
        self.redis = redis
        self.replicas = replicas
        self.workers = workers
        self.relays = relays
        self.kinds = kinds
        self.timeline: list[Fault] = []

    def counts(self) -> Counter[str]:
        return Counter(fault.kind for fault in self.timeline)

    async def run(self, count: int, duration: float, stop: asyncio.Event) -> None:
        """Injects ``count`` faults, one in each ``duration / count`` slice, at a random
        moment of its first half (so each has time to end within its slice)."""
        began = time.monotonic()
        for slot in range(count):
            due = began + duration * (slot + self.rng.uniform(0.1, 0.5)) / count
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if stop.is_set():
                return
            await self.inject(self.rng.choice(self.kinds))

    async def inject(self, kind: str) -> None:
        rng = self.rng
        if kind in ("kill", "stop", "partition"):
            replica = rng.choice(self.replicas)
            fault = self._begin(kind, replica.id)
            if kind == "kill":
                replica.kill()
                await asyncio.sleep(rng.uniform(0.2, 2.0))
                await asyncio.to_thread(replica.start)
            elif kind == "stop":
                seconds = self.lease * rng.uniform(1.3, 2.5)
                fault.detail = f"{seconds:.1f}s"
                replica.pause()
                await asyncio.sleep(seconds)
                replica.resume()
            else:
                seconds = self.lease * rng.uniform(0.3, 3.0)
                fault.detail = f"{seconds:.1f}s"
                replica.net.cut_from_redis()
                await asyncio.sleep(seconds)
                replica.net.heal()
        elif kind == "redis":
            fault = self._begin(kind, "redis")
            self.redis.kill()
            await asyncio.sleep(rng.uniform(0.3, 3.0))
            await asyncio.to_thread(self.redis.start)
        elif kind == "worker-drop":
            index = rng.randrange(len(self.relays))
            fault = self._begin(kind, self.workers[index].name)
            fault.detail = f"{self.relays[index].drop()} connection(s)"
        elif kind == "worker-kill":
            worker = rng.choice(self.workers)
            fault = self._begin(kind, worker.name)
            worker.kill()
            await asyncio.sleep(rng.uniform(0.1, 1.0))
            worker.start()
        else:
            raise ValueError(f"unknown fault {kind!r}")
        fault.end = time.time()

    def _begin(self, kind: str, target: str) -> Fault:
        fault = Fault(kind, target, time.time())
        self.timeline.append(fault)
        return fault

    def heal_all(self) -> None:
        """After the run (or when it is interrupted): everything running and connected."""
        for replica in self.replicas:
            if replica.stopped:
                replica.resume()
            replica.net.heal()

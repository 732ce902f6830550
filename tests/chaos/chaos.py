#!/usr/bin/env python3
"""A bounded chaos run of Reins: replicas on Redis, Python workers, a load of tasks, and
faults injected at random while it runs; then a check of the whole history.

- **The cluster**, in network namespaces of the run's own (``netns.py``; needs root):
  redis-server (AOF, ``appendfsync always``), ``--replicas`` replicas (``--lease``), each in
  a namespace of its own behind a veth pair, and ``--workers`` worker processes
  (``worker.py``, ``reins.aio.AsyncWorker``) reaching the replicas through a TCP relay
  that stands in for a load balancer (``relay.py``).
- **The load** (``load.py``): ``--tasks`` tasks spread over ``--duration`` seconds, worker
  tasks and built-in ``sleep`` ones, with progress and checkpoints, questions answered with
  AnswerTask, budgets that run out, soft and hard cancels, bulk cancels (CancelTasks) of
  sessions and labels, retried attempts; each task watched to its end.
- **The faults** (``faults.py``): ``--faults`` faults over the same time: kill -9 and
  restart a replica, SIGSTOP one past its lease, cut one off from Redis while clients
  still reach it, kill -9 and restart Redis, drop a worker's connection, kill -9 a worker.
- **The checks** (``checker.py``): one terminal state per task that every replica reports,
  no terminal state overwritten, no watch gap or repeated version, every acknowledged
  cancel effective, fencing (no fenced write taken, no run outliving its attempt once its
  replica could know), budgets exceeded by at most one report, answers delivered.

Exit status: 0 no violation; 1 violations; 2 the run fell short of ``--tasks`` or
``--faults`` (bounded by ``--duration`` + ``--settle``). Not part of ``tests/run.sh`` at
full size; ``tests/chaos/run.sh --short`` is (about 300 tasks and 8 faults).

    tests/chaos/chaos.py --bin-dir target/release --tasks 10000 --faults 50 --duration 600 --seed 1
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import netns
from checker import Verdict, check, read_finals
from cluster import Redis, RedisCluster, Replica, WorkerProcess
from faults import KINDS, Faults
from history import Fault, Run, read_runs
from load import Clients, Load
from relay import Relay

REPO = Path(__file__).resolve().parents[2]
#: The reconcile period of replicas (cluster.rs RECONCILE_EVERY): how often a replica
#: re-reads the tasks it runs, so how late it may learn of a change it missed.
RECONCILE = 2.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--bin-dir", type=Path, default=REPO / "target" / "debug", help="where reinsd is"
    )
    parser.add_argument("--tasks", type=int, default=300, help="tasks to start")
    parser.add_argument("--faults", type=int, default=8, help="faults to inject")
    parser.add_argument(
        "--duration",
        type=float,
        default=90.0,
        help="seconds over which the tasks and faults are spread",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=90.0,
        help="seconds the last tasks may take to end after --duration",
    )
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4, help="worker processes")
    parser.add_argument("--worker-concurrency", type=int, default=16)
    parser.add_argument(
        "--in-flight", type=int, default=200, help="tasks followed at once (the load waits beyond)"
    )
    parser.add_argument("--lease", type=float, default=3.0, help="replicas' --lease-ttl, s")
    parser.add_argument(
        "--fault-kinds",
        default=",".join(KINDS),
        help="comma-separated subset of: " + ", ".join(KINDS),
    )
    parser.add_argument(
        "--store",
        choices=["redis", "cluster"],
        default="redis",
        help="one redis-server, or `cluster`: a Redis Cluster of three masters (the `redis` "
        "fault kills one master and starts it again)",
    )
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument("--report", type=Path, help="write the summary as JSON here")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory (logs, AOF) even without violations",
    )
    args = parser.parse_args()
    kinds = [kind for kind in args.fault_kinds.split(",") if kind]
    if unknown := set(kinds) - set(KINDS):
        parser.error(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    if args.replicas < 2:
        parser.error("--replicas: at least 2 (faults take one away)")
    args.fault_kinds = kinds
    return args


async def chaos(
    args: argparse.Namespace, seed: int, work: Path
) -> tuple[Verdict, dict[str, object]]:
    rng = random.Random(seed)
    redis: Redis | RedisCluster = RedisCluster(work) if args.store == "cluster" else Redis(work)
    redis.start()
    reinsd = args.bin_dir / "reinsd"
    replicas = [Replica(i, reinsd, redis.url, args.lease, work) for i in range(args.replicas)]
    addresses = [replica.address for replica in replicas]
    relays = [Relay(lambda: addresses, random.Random(rng.random())) for _ in range(args.workers)]
    workers: list[WorkerProcess] = []
    clients = Clients(addresses, random.Random(rng.random()))
    faults = Faults(
        random.Random(rng.random()), args.lease, redis, replicas, workers, relays, args.fault_kinds
    )
    load = Load(clients, random.Random(rng.random()), seed)
    stop = asyncio.Event()
    began = time.time()
    try:
        for replica in replicas:
            replica.net.create()
            replica.start()
        for index, relay in enumerate(relays):
            await relay.start()
            workers.append(WorkerProcess(index, relay.port, args.worker_concurrency, work))
            workers[-1].start()
        injecting = asyncio.ensure_future(faults.run(args.faults, args.duration, stop))
        loading = asyncio.ensure_future(load.run(args.tasks, args.duration, args.in_flight, stop))
        bound = args.duration + args.settle
        done, late = await asyncio.wait({injecting, loading}, timeout=bound)
        stop.set()
        if late:
            print(f"chaos: {bound:.0f} s are up; stopping the load", file=sys.stderr)
        for part in late:
            part.cancel()
        await asyncio.gather(injecting, loading, return_exceptions=True)
        for part in done:
            part.result()  # a crash of the run itself
        faults.heal_all()
        loaded = time.time()
        await read_finals({r.id: r.address for r in replicas}, load.histories)
        runs = [
            run
            for worker in workers
            for run in read_runs(worker.runs, worker.name, worker.killed_at)
        ]
        slack = RECONCILE + args.lease + 2.0
        verdict = check(load.histories, runs, faults.timeline, [r.id for r in replicas], slack)
        record(work, verdict, runs, faults.timeline)
        summary: dict[str, object] = {
            "seed": seed,
            "command": " ".join(sys.argv),
            "seconds of load and faults": round(loaded - began, 1),
            "seconds in all (with the checks)": round(time.time() - began, 1),
            "tasks started": sum(1 for h in load.histories if h.id),
            "faults": dict(sorted(faults.counts().items())),
            "faults total": len(faults.timeline),
            "bulk cancels": dict(load.bulk_cancels),
            "starts refused": load.starts_refused,
            "stats": dict(sorted(verdict.stats.items())),
            "longest overlap of two attempts (s)": round(verdict.longest_overlap[0], 2),
            "call errors (transient ones retried)": dict(sorted(clients.errors.items())),
            "violations": len(verdict.violations),
        }
        return verdict, summary
    finally:
        stop.set()
        faults.heal_all()
        for worker in workers:
            worker.kill()
        for relay in relays:
            await relay.close()
        await clients.close()
        for replica in replicas:
            replica.kill()
        if isinstance(redis, RedisCluster):
            redis.kill_all()
        else:
            redis.kill()


def record(work: Path, verdict: Verdict, runs: list[Run], timeline: list[Fault]) -> None:
    """The faults, and the whole history of each task with a violation (with its runs), as
    JSON in the work directory: what an investigation starts from."""
    (work / "faults.json").write_text(
        json.dumps([dataclasses.asdict(f) for f in timeline], indent=1)
    )
    with (work / "violations.jsonl").open("w") as out:
        for history in verdict.violated:
            entry = dataclasses.asdict(history)
            entry["runs"] = [dataclasses.asdict(r) for r in runs if r.task == history.id]
            out.write(json.dumps(entry, default=str) + "\n")


def main() -> int:
    args = parse_args()
    netns.reexec_isolated()
    netns.set_up_run_namespace()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"chaos: seed {seed}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="reins-chaos."))
    try:
        verdict, summary = asyncio.run(chaos(args, seed, work))
    except BaseException:
        print(f"chaos: the run itself failed; its logs are in {work}", file=sys.stderr)
        raise
    print(json.dumps(summary, indent=2))
    for violation in verdict.violations[:100]:
        print(f"  VIOLATION {violation}", file=sys.stderr)
    if len(verdict.violations) > 100:
        print(f"  … and {len(verdict.violations) - 100} more", file=sys.stderr)
    if args.report:
        args.report.write_text(
            json.dumps({**summary, "violation list": verdict.violations}, indent=2)
        )
    short = summary["tasks started"] != args.tasks or summary["faults total"] != args.faults
    if verdict.violations or short or args.keep:
        print(f"chaos: logs, run logs and the AOF kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    if verdict.violations:
        return 1
    return 2 if short else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""A bounded chaos run of Reins on one Redis (a skeleton of issue 14's chaos run).

Starts redis-server (AOF on) and two replicas on free loopback ports in a temporary
directory, drives a load of `sleep` tasks and soft/hard cancels through the `reins` CLI,
and meanwhile injects faults at random: kill -9 a replica and restart it on the same port,
or SIGSTOP a replica for longer than its lease and SIGCONT it. Then it waits for every task
to end and checks the history:

- every task ends in exactly one terminal state, and both replicas report the same one;
- every cancel a client saw acknowledged took effect: the task ended CANCELLED, or it had
  already ended when the cancel was answered (the answer says so).

Bounded by --tasks and --seconds; not part of tests/run.sh (.ci/run). Not there yet (see
issue 14): Redis restarts and cluster failover, workers in Python and their dropped
connections, questions and bulk cancels, cutting a replica off from Redis, and the checks
on fencing, watch gaps and budgets.

    tests/chaos/chaos.py --bin-dir target/debug --tasks 200 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TERMINAL = {"TASK_STATE_COMPLETED", "TASK_STATE_FAILED", "TASK_STATE_CANCELLED"}
LEASE = "2s"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, ready: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} within {seconds} s")


@dataclass
class Replica:
    name: str
    port: int
    bin_dir: Path
    redis_url: str
    work: Path
    process: subprocess.Popen[bytes] | None = None
    stopped: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.work / f"{self.name}.log", "ab")
        self.process = subprocess.Popen(
            [str(self.bin_dir / "reinsd"), "--listen", f"127.0.0.1:{self.port}",
             "--replica-id", self.name, "--redis-url", self.redis_url,
             "--lease-ttl", LEASE, "--shutdown-grace", "1s"],
            stdout=subprocess.DEVNULL, stderr=log)
        wait_until(f"replica {self.name} listening", self.listening)

    def listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        if self.process:
            self.process.kill()
            self.process.wait()

    def signal(self, sig: signal.Signals) -> None:
        if self.process:
            self.process.send_signal(sig)
            self.stopped = sig == signal.SIGSTOP


@dataclass
class History:
    started: list[str] = field(default_factory=list)
    # task id → the outcome the cancel call answered with (CancelOutcome)
    cancels: dict[str, str] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)


def cli(bin_dir: Path, replica: Replica, *args: str) -> dict | None:
    """Runs `reins --json …` against `replica`; None if the call failed (a fault)."""
    done = subprocess.run(
        [str(bin_dir / "reins"), "--server", replica.url, "--json", *args],
        capture_output=True, timeout=30)
    if done.returncode != 0:
        return None
    return json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", type=Path, required=True, help="reinsd and reins")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"chaos: seed {seed}", file=sys.stderr)

    work = Path(tempfile.mkdtemp(prefix="reins-chaos."))
    redis_port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
         "--appendonly", "yes", "--dir", str(work), "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    redis_url = f"redis://127.0.0.1:{redis_port}"
    replicas = [Replica(name, free_port(), args.bin_dir, redis_url, work) for name in "ab"]
    history = History()
    try:
        wait_until("redis-server answering", lambda: subprocess.run(
            ["redis-cli", "-p", str(redis_port), "ping"], capture_output=True
        ).stdout.strip() == b"PONG")
        for replica in replicas:
            replica.start()
        deadline = time.monotonic() + args.seconds
        while len(history.started) < args.tasks and time.monotonic() < deadline:
            through = rng.choice([r for r in replicas if not r.stopped] or replicas)
            roll = rng.random()
            if roll < 0.6:
                params = json.dumps({"steps": rng.randint(0, 20), "step_ms": 50})
                task = cli(args.bin_dir, through, "start", "sleep", "--params", params)
                if task:
                    history.started.append(task["id"])
            elif roll < 0.9 and history.started:
                victim = rng.choice(history.started)
                hard = ["--hard"] if rng.random() < 0.5 else []
                answer = cli(args.bin_dir, through, "cancel", victim, *hard)
                if answer is not None:
                    history.cancels[victim] = str(answer.get("outcome", ""))
            elif roll < 0.95:
                replica = rng.choice(replicas)
                history.faults.append(f"kill -9 {replica.name}")
                replica.kill()
                replica.start()
            else:
                replica = rng.choice(replicas)
                history.faults.append(f"SIGSTOP {replica.name} past the lease")
                replica.signal(signal.SIGSTOP)
                time.sleep(3.0)
                replica.signal(signal.SIGCONT)
        for replica in replicas:
            if replica.stopped:
                replica.signal(signal.SIGCONT)
        return check(args.bin_dir, replicas, history)
    finally:
        for replica in replicas:
            replica.kill()
        redis.kill()
        redis.wait()
        shutil.rmtree(work, ignore_errors=True)


def check(bin_dir: Path, replicas: list[Replica], history: History) -> int:
    """Waits for every task to end and verifies the history; 1 on any violation."""
    violations: list[str] = []
    for task_id in history.started:
        states: dict[str, str] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for replica in replicas:
                task = cli(bin_dir, replica, "check", task_id)
                if task:
                    states[replica.name] = task.get("state", "")
            if all(state in TERMINAL for state in states.values()) and len(states) == len(replicas):
                break
            time.sleep(0.2)
        if len(set(states.values())) != 1 or not set(states.values()) <= TERMINAL:
            violations.append(f"task {task_id}: replicas report {states}")
            continue
        final = next(iter(states.values()))
        answered = history.cancels.get(task_id)
        # Only a task that had already ended may ignore an acknowledged cancel.
        if answered not in (None, "CANCEL_OUTCOME_ALREADY_FINISHED") and final != "TASK_STATE_CANCELLED":
            violations.append(f"task {task_id}: cancel answered {answered}, ended {final}")
    print(f"chaos: {len(history.started)} tasks, {len(history.cancels)} cancels, "
          f"{len(history.faults)} faults, {len(violations)} violations", file=sys.stderr)
    for violation in violations:
        print(f"  {violation}", file=sys.stderr)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())

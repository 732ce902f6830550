"""The pod contract, run: start reinsd as the kubelet would from a rendered Deployment and
check what a pod's life asks of it.

    pod_contract.py RENDERED.yaml --reinsd PATH --grpcurl PATH

From the Deployment `reins` (container `reinsd`) and the ConfigMaps and Secrets rendered
with it: the container's command and args (the image's ENTRYPOINT when it has none,
/usr/local/bin/reinsd, replaced by the binary under test), its environment as the kubelet
builds it (envFrom, then env with `valueFrom` resolved — fieldRef from the pod, configMap
and secret keys — and `$(VAR)` expanded), nothing else but PATH and HOSTNAME (no HOME);
REINS_REDIS_URL points at a redis-server of the test's own, and the container ports are
mapped to free loopback ports (no network namespace here). It runs as uid/gid 65532 with
no capabilities and no_new_privs (setpriv; when not root the switch is skipped, saying
so), in a read-only working directory. Then, as the kubelet does:

- the startup probe until it succeeds (period, timeout and failure threshold from the
  manifest), then readiness SERVING and liveness;
- two running tasks (one with attempts left, one without) and an open WatchTask;
- SIGTERM, as pod deletion sends: readiness NOT_SERVING at once (within one probe
  period), the watch ends UNAVAILABLE, the process exits 0 before
  terminationGracePeriodSeconds; the task with attempts left went back to the queue
  (PENDING, "handed back"), the other is CANCELLED ("server shutting down"), as README
  "Run on Kubernetes" documents.

Prints `ok   …` / `FAIL …` / `skip …` lines (tests/deploy/validate.sh counts them).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

UID = 65532
POD_NAME = "reins-7c9d8b6f5-x2k4q"
NAMESPACE = "reins"
#: What a container runtime sets when the image has no PATH of its own.
RUNTIME_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Where the image puts reinsd (deploy/Containerfile's ENTRYPOINT).
IMAGE_ENTRYPOINT = ["/usr/local/bin/reinsd"]

failures = 0


def report(ok: bool, name: str, why: str = "") -> bool:
    global failures
    if ok:
        print(f"ok   {name}", flush=True)
    else:
        failures += 1
        print(f"FAIL {name}{': ' + why if why else ''}", flush=True)
    return ok


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load(
    path: str,
) -> tuple[dict[str, Any], dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    deployment = None
    config_maps: dict[str, dict[str, str]] = {}
    secrets: dict[str, dict[str, str]] = {}
    for doc in yaml.safe_load_all(Path(path).read_text()):
        if not doc:
            continue
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "Deployment" and name == "reins":
            deployment = doc
        elif kind == "ConfigMap":
            config_maps[name] = dict(doc.get("data") or {})
        elif kind == "Secret":
            data = {
                k: base64.b64decode(v).decode()
                for k, v in (doc.get("data") or {}).items()
            }
            secrets[name] = {**data, **(doc.get("stringData") or {})}
    if deployment is None:
        sys.exit(f"{path}: no Deployment reins")
    return deployment, config_maps, secrets


def environment(
    container: dict[str, Any], config_maps: dict, secrets: dict
) -> dict[str, str]:
    """The container's environment as the kubelet builds it."""
    env: dict[str, str] = {"PATH": RUNTIME_PATH, "HOSTNAME": POD_NAME}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            values = config_maps[source["configMapRef"]["name"]]
        else:
            values = secrets[source["secretRef"]["name"]]
        env.update({prefix + k: v for k, v in values.items()})
    fields = {"metadata.name": POD_NAME, "metadata.namespace": NAMESPACE}
    for var in container.get("env") or []:
        if "value" in var:
            # $(VAR) refers to a variable defined before; $$ escapes.
            value = re.sub(
                r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: (
                    "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0))
                ),
                var["value"],
            )
        else:
            ref = var["valueFrom"]
            if "fieldRef" in ref:
                value = fields[ref["fieldRef"]["fieldPath"]]
            elif "configMapKeyRef" in ref:
                value = config_maps[ref["configMapKeyRef"]["name"]][
                    ref["configMapKeyRef"]["key"]
                ]
            elif "secretKeyRef" in ref:
                value = secrets[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
            else:
                sys.exit(f"env {var['name']}: unsupported valueFrom {ref}")
        env[var["name"]] = value
    return env


class Grpc:
    """grpcurl calls, as plaintext gRPC on one address."""

    def __init__(self, grpcurl: str, address: str) -> None:
        self.grpcurl, self.address = grpcurl, address

    def call(
        self, method: str, request: dict, timeout: float = 5.0
    ) -> tuple[bool, Any]:
        run = subprocess.run(
            [
                self.grpcurl,
                "-plaintext",
                "-max-time",
                str(timeout),
                "-d",
                json.dumps(request),
                self.address,
                method,
            ],
            capture_output=True,
            text=True,
            timeout=timeout + 5,
            check=False,
        )
        if run.returncode != 0:
            return False, run.stderr.strip()
        return True, json.loads(run.stdout) if run.stdout.strip() else {}

    def health(self, service: str, timeout: float) -> str:
        ok, answer = self.call(
            "grpc.health.v1.Health/Check", {"service": service}, timeout
        )
        return answer.get("status", "") if ok else f"error: {answer}"


def probe(kind: str, spec: dict[str, Any], grpc: Grpc, ports: dict[Any, int]) -> bool:
    """One probe, as the kubelet runs it: success or not, within its timeout."""
    timeout = float(spec.get("timeoutSeconds", 1))
    if "grpc" in spec:
        port = ports[spec["grpc"]["port"]]
        return (
            Grpc(grpc.grpcurl, f"127.0.0.1:{port}").health(
                spec["grpc"].get("service", ""), timeout
            )
            == "SERVING"
        )
    if "httpGet" in spec:
        get = spec["httpGet"]
        url = f"http://127.0.0.1:{ports[get['port']]}{get.get('path', '/')}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as answer:
                return 200 <= answer.status < 400
        except (OSError, urllib.error.HTTPError):
            return False
    if "tcpSocket" in spec:
        try:
            socket.create_connection(
                ("127.0.0.1", ports[spec["tcpSocket"]["port"]]), timeout
            ).close()
            return True
        except OSError:
            return False
    sys.exit(f"{kind} probe: unsupported {spec}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("rendered")
    parser.add_argument("--reinsd", required=True)
    parser.add_argument("--grpcurl", required=True)
    args = parser.parse_args()

    deployment, config_maps, secrets = load(args.rendered)
    pod = deployment["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "reinsd")
    grace_period = int(pod.get("terminationGracePeriodSeconds", 30))
    http_probes = any(
        "httpGet" in (container.get(p) or {})
        for p in ("startupProbe", "readinessProbe")
    )
    help_text = subprocess.run(
        [args.reinsd, "--help"], capture_output=True, text=True, check=False
    ).stdout
    if http_probes and "--metrics-listen" not in help_text:
        print(
            "skip pod contract: its probes are HTTP on the metrics port (the observability "
            "issue's /readyz), which this reinsd does not serve yet"
        )
        return 0

    work = Path(tempfile.mkdtemp(prefix="reins-pod-"))
    redis = reinsd = None
    try:
        # The test's own Redis.
        redis_port = free_port()
        redis = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(work),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        env = environment(container, config_maps, secrets)
        env["REINS_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}"
        # Container ports → free loopback ports (no network namespace).
        ports: dict[Any, int] = {}
        for port in container.get("ports") or []:
            mapped = free_port()
            ports[port["containerPort"]] = ports[port.get("name", "")] = mapped
        grpc_port = ports[50051]
        env["REINS_LISTEN"] = f"127.0.0.1:{grpc_port}"
        if "REINS_METRICS_LISTEN" in env and 9464 in ports:
            env["REINS_METRICS_LISTEN"] = f"127.0.0.1:{ports[9464]}"
        report("HOME" not in env, "no HOME in the container's environment")
        report(
            env.get("REINS_REPLICA_ID") == POD_NAME,
            "REINS_REPLICA_ID is the pod's name",
        )

        # The binary where uid 65532 can run it; a working directory it cannot write.
        binary = work / "reinsd"
        shutil.copy(args.reinsd, binary)
        binary.chmod(0o755)
        cwd = work / "workdir"
        cwd.mkdir()
        cwd.chmod(0o555)
        work.chmod(0o755)
        command = container.get("command") or IMAGE_ENTRYPOINT
        argv = [
            str(binary) if command[0] == IMAGE_ENTRYPOINT[0] else command[0],
            *command[1:],
            *(container.get("args") or []),
        ]
        if os.geteuid() == 0:
            argv = [
                "setpriv",
                f"--reuid={UID}",
                f"--regid={UID}",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
                *argv,
            ]
        else:
            print(f"skip uid {UID}: not root, so reinsd runs as uid {os.geteuid()}")
        log = open(work / "reinsd.log", "wb")  # noqa: SIM115 - reinsd's stderr, for its life
        reinsd = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        grpc = Grpc(args.grpcurl, f"127.0.0.1:{grpc_port}")

        # Startup probe: every periodSeconds, at most failureThreshold times.
        startup = container["startupProbe"]
        started = False
        for _ in range(int(startup.get("failureThreshold", 3))):
            if probe("startup", startup, grpc, ports):
                started = True
                break
            time.sleep(
                float(startup.get("periodSeconds", 10))
            )  # the probe's own period
        if not report(
            started,
            "startup probe succeeds within its budget",
            (work / "reinsd.log").read_text(errors="replace")[-2000:],
        ):
            return 1
        with open(f"/proc/{reinsd.pid}/status") as status:
            uids = next(line for line in status if line.startswith("Uid:")).split()[1:]
        if os.geteuid() == 0:
            report(uids == [str(UID)] * 4, f"reinsd runs as uid {UID}", f"Uid: {uids}")
        report(
            probe("readiness", container["readinessProbe"], grpc, ports),
            "readiness probe SERVING",
        )
        report(
            probe("liveness", container["livenessProbe"], grpc, ports),
            "liveness probe succeeds",
        )

        # Two long tasks: one may be handed back, one may not; a watch on the first.
        def start(max_attempts: int) -> str:
            ok, task = grpc.call(
                "reins.v1.TaskService/StartTask",
                {
                    "kind": "sleep",
                    "params": {"steps": 100000, "step_ms": 50},
                    "max_attempts": max_attempts,
                },
            )
            if not ok:
                sys.exit(f"StartTask: {task}")
            return str(task["id"])

        movable, last_chance = start(3), start(1)
        watch = subprocess.Popen(
            [
                args.grpcurl,
                "-plaintext",
                "-d",
                json.dumps({"task_id": movable}),
                grpc.address,
                "reins.v1.TaskService/WatchTask",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert watch.stdout is not None
        first_event = ""
        for line in watch.stdout:  # the first event: the watch is live
            first_event += line
            if line.startswith("}"):
                break
        report('"id"' in first_event, "a WatchTask is open", first_event[-200:])
        terminated = time.monotonic()
        reinsd.terminate()
        readiness = container["readinessProbe"]
        if "grpc" in readiness:
            not_serving = grpc.health(
                readiness["grpc"].get("service", ""),
                float(readiness.get("timeoutSeconds", 1)),
            )
            report(
                not_serving == "NOT_SERVING",
                "readiness NOT_SERVING at once after SIGTERM",
                not_serving,
            )
        else:
            report(
                not probe("readiness", readiness, grpc, ports),
                "readiness fails at once after SIGTERM",
            )
        try:
            out, err = watch.communicate(
                timeout=float(readiness.get("periodSeconds", 10))
            )
            report(
                "Code: Unavailable" in err,
                "the open WatchTask ends UNAVAILABLE at once",
                f"{err.strip()} / {out[-200:]}",
            )
        except subprocess.TimeoutExpired:
            watch.kill()
            report(False, "the open WatchTask ends UNAVAILABLE at once", "still open")
        try:
            code = reinsd.wait(timeout=grace_period)
            took = time.monotonic() - terminated
            report(
                code == 0,
                f"exit 0 before terminationGracePeriodSeconds ({took:.1f} s < {grace_period} s)",
                f"exit code {code}",
            )
        except subprocess.TimeoutExpired:
            report(
                False,
                f"exit before terminationGracePeriodSeconds ({grace_period} s)",
                "still running",
            )
            reinsd.kill()
            return 1

        # What became of the tasks, read through a fresh replica on the same Redis.
        reader_port = free_port()
        reader_env = {"PATH": RUNTIME_PATH}
        reader = subprocess.Popen(
            [
                args.reinsd,
                "--listen",
                f"127.0.0.1:{reader_port}",
                "--replica-id",
                "reader",
                "--redis-url",
                env["REINS_REDIS_URL"],
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=work,
            env=reader_env,
        )
        try:
            read = Grpc(args.grpcurl, f"127.0.0.1:{reader_port}")
            tasks: dict[str, Any] = {}
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(tasks) < 2:
                for task_id in (movable, last_chance):
                    ok, task = read.call(
                        "reins.v1.TaskService/CheckTask", {"task_id": task_id}, 2
                    )
                    if ok:
                        tasks[task_id] = task
                time.sleep(0.1)  # polling the reader's start, with a deadline
            moved, cancelled = tasks.get(movable, {}), tasks.get(last_chance, {})
            # The reader replica itself may pick the handed-back task up: PENDING or RUNNING
            # again, in its second attempt.
            report(
                moved.get("state") in ("TASK_STATE_PENDING", "TASK_STATE_RUNNING")
                and "went back to the queue" in moved.get("error", ""),
                "a running task with attempts left is handed back to the queue",
                json.dumps(moved)[:300],
            )
            report(
                cancelled.get("state") == "TASK_STATE_CANCELLED"
                and cancelled.get("cancel", {}).get("reason") == "server shutting down",
                "a running task with no attempt left is cancelled",
                json.dumps(cancelled)[:300],
            )
        finally:
            reader.kill()
            reader.wait()
    finally:
        for process in (reinsd, redis):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

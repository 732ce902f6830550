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
so), in a read-only working directory. The Secrets the container mounts (production: TLS,
auth config, Redis password) become files in the test's temp dir, read-only and readable
by group 65532 as `defaultMode: 0440` + `fsGroup` make them, holding a throwaway CA's
server certificate (trustme), an auth.toml with one operator token (its sha256) and the
password of the test's Redis (started with `requirepass`); every variable pointing into a
mount is rewritten to the temp dir, and the gRPC calls go over TLS with the token. Then, as
the kubelet does:

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
import hashlib
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
from secrets import token_hex
from typing import Any

import trustme
import yaml

UID = 65532
POD_NAME = "reins-7c9d8b6f5-x2k4q"
NAMESPACE = "reins"
#: What a container runtime sets when the image has no PATH of its own.
RUNTIME_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Where the image puts reinsd (deploy/Containerfile's ENTRYPOINT).
IMAGE_ENTRYPOINT = ["/usr/local/bin/reinsd"]
#: The tenant of the test's token (production's auth config).
TENANT = "contract"

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
    fields = {
        "metadata.name": POD_NAME,
        "metadata.namespace": NAMESPACE,
        "spec.nodeName": "node-a",
    }
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
    """grpcurl calls on one address: plaintext, or TLS (the CA) with a bearer token."""

    def __init__(
        self,
        grpcurl: str,
        address: str,
        ca_cert: Path | None = None,
        token: str | None = None,
    ) -> None:
        self.grpcurl, self.address = grpcurl, address
        self.ca_cert, self.token = ca_cert, token

    def at(self, address: str) -> Grpc:
        return Grpc(self.grpcurl, address, self.ca_cert, self.token)

    def argv(self, method: str, request: dict, *, plaintext: bool = False) -> list[str]:
        """grpcurl's command line; `plaintext` forces it (to check TLS is required)."""
        transport = (
            ["-plaintext"]
            if plaintext or self.ca_cert is None
            else ["-cacert", str(self.ca_cert)]
        )
        auth = ["-H", f"authorization: Bearer {self.token}"] if self.token else []
        return [
            self.grpcurl,
            *transport,
            *auth,
            "-d",
            json.dumps(request),
            self.address,
            method,
        ]

    def call(
        self,
        method: str,
        request: dict,
        timeout: float = 5.0,
        *,
        plaintext: bool = False,
    ) -> tuple[bool, Any]:
        argv = self.argv(method, request, plaintext=plaintext)
        run = subprocess.run(
            [argv[0], "-max-time", str(timeout), *argv[1:]],
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


class Mounted:
    """The Secret volumes of the container, as files in the test's temp dir, and what a
    client then needs: the CA of the server's certificate, the bearer token; and the
    password the test's Redis must require."""

    #: The variables naming a file of a mounted Secret, and what the test puts there.
    FILES = (
        "REINS_TLS_CERT",
        "REINS_TLS_KEY",
        "REINS_AUTH_CONFIG",
        "REINS_REDIS_PASSWORD_FILE",
    )

    def __init__(self) -> None:
        self.ca_cert: Path | None = None
        self.token: str | None = None
        self.redis_password: str | None = None
        self._leaf: trustme.LeafCert | None = None

    def materialise(
        self, pod: dict[str, Any], container: dict[str, Any], env: dict, work: Path
    ) -> None:
        """Write the files and point `env` at them."""
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        mounts = [
            m
            for m in container.get("volumeMounts") or []
            if "secret" in volumes.get(m["name"], {})
        ]
        for mount in mounts:
            secret = volumes[mount["name"]]["secret"]
            report(
                mount.get("readOnly") is True and "subPath" not in mount,
                f"Secret {secret['secretName']} mounted read-only at {mount['mountPath']} "
                "(whole, so rotations reach the files)",
                str(mount),
            )
        root = work / "secrets"
        written: list[Path] = []
        for var in self.FILES:
            if var not in env:
                continue
            mount = next(
                (
                    m
                    for m in mounts
                    if env[var].startswith(m["mountPath"].rstrip("/") + "/")
                ),
                None,
            )
            if not report(
                mount is not None,
                f"{var} names a file of a mounted Secret",
                env[var],
            ):
                continue
            target = root / env[var].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self._contents(var, work))
            written.append(target)
            env[var] = str(target)
        if not written:
            return
        # defaultMode 0440 with fsGroup 65532: readable by the pod's group, by no one else.
        for path in written:
            path.chmod(0o440)
        for directory in [p for p in root.rglob("*") if p.is_dir()] + [root]:
            directory.chmod(0o555)
        if os.geteuid() == 0:
            for path in [*written, *root.rglob("*"), root]:
                os.chown(path, 0, UID)

    def _contents(self, var: str, work: Path) -> bytes:
        if var in ("REINS_TLS_CERT", "REINS_TLS_KEY"):
            server = self._server_cert(work)
            if var == "REINS_TLS_CERT":
                return b"".join(blob.bytes() for blob in server.cert_chain_pems)
            return server.private_key_pem.bytes()
        if var == "REINS_AUTH_CONFIG":
            self.token = token_hex(32)
            digest = hashlib.sha256(self.token.encode()).hexdigest()
            return (
                "[[principal]]\n"
                'name = "pod-contract"\n'
                f'tenant = "{TENANT}"\n'
                'roles = ["operator"]\n'
                f'token_sha256 = "{digest}"\n'
            ).encode()
        self.redis_password = token_hex(16)
        return (self.redis_password + "\n").encode()

    def _server_cert(self, work: Path) -> trustme.LeafCert:
        """One throwaway CA and its server certificate, for the names clients dial."""
        if self._leaf is None:
            ca = trustme.CA()
            self._leaf = ca.issue_cert(
                "127.0.0.1", "localhost", "reins", f"reins.{NAMESPACE}.svc"
            )
            self.ca_cert = work / "ca.pem"
            ca.cert_pem.write_to_path(str(self.ca_cert))
        return self._leaf


def probe(kind: str, spec: dict[str, Any], grpc: Grpc, ports: dict[Any, int]) -> bool:
    """One probe, as the kubelet runs it: success or not, within its timeout."""
    timeout = float(spec.get("timeoutSeconds", 1))
    if "grpc" in spec:
        port = ports[spec["grpc"]["port"]]
        # The kubelet's gRPC probe: plaintext, no credentials.
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
        env = environment(container, config_maps, secrets)
        mounted = Mounted()
        mounted.materialise(pod, container, env, work)
        # The test's own Redis, with the password of the mounted Secret if there is one.
        redis_port = free_port()
        redis = subprocess.Popen(
            [
                "redis-server",
                *(
                    ["--requirepass", mounted.redis_password]
                    if mounted.redis_password
                    else []
                ),
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
        grpc = Grpc(
            args.grpcurl, f"127.0.0.1:{grpc_port}", mounted.ca_cert, mounted.token
        )

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
        if mounted.ca_cert is not None:
            ok, answer = grpc.call(
                "reins.v1.TaskService/ListActive", {}, 5, plaintext=True
            )
            report(not ok, "TLS: a plaintext gRPC call is refused", str(answer))
            ok, answer = grpc.call("grpc.health.v1.Health/Check", {}, 5)
            report(
                ok and answer.get("status") == "SERVING",
                "TLS: gRPC health over TLS, verified against the Secret's CA",
                str(answer),
            )
        if mounted.token is not None:
            ok, answer = Grpc(grpc.grpcurl, grpc.address, mounted.ca_cert).call(
                "reins.v1.TaskService/ListActive", {}, 5
            )
            report(
                not ok and "Unauthenticated" in str(answer),
                "auth: a call without the token is UNAUTHENTICATED",
                str(answer),
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
            grpc.argv("reins.v1.TaskService/WatchTask", {"task_id": movable}),
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
        # "At once" as the kubelet sees it: by its next probe. The signal is handled
        # asynchronously, so a probe sent right after it may still beat it: poll until the
        # probe fails, within one probe period.
        period = float(readiness.get("periodSeconds", 10))
        deadline = time.monotonic() + period
        failed = False
        while not failed and time.monotonic() < deadline:
            failed = not probe("readiness", readiness, grpc, ports)
            if not failed:
                time.sleep(0.05)
        took = time.monotonic() - terminated
        report(
            failed,
            f"readiness fails after SIGTERM before the next probe ({took:.2f} s < {period:.0f} s)",
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

        # What became of the tasks, read through a fresh replica on the same Redis, with
        # the pod's configuration (TLS, auth: the tasks are the token's tenant's).
        reader_port = free_port()
        reader_env = {
            **{k: v for k, v in env.items() if k != "REINS_METRICS_LISTEN"},
            "REINS_LISTEN": f"127.0.0.1:{reader_port}",
            "REINS_REPLICA_ID": "reader",
        }
        reader = subprocess.Popen(
            [args.reinsd],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=work,
            env=reader_env,
        )
        try:
            read = grpc.at(f"127.0.0.1:{reader_port}")
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
        for directory, _, _ in os.walk(work):  # the read-only Secret dirs, removable again
            os.chmod(directory, 0o755)
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

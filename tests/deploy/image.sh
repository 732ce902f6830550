#!/usr/bin/env bash
# The container image, built and run the way a cluster would run it, without a container
# runtime: builds deploy/Containerfile with podman (or buildah), checks the image config,
# unpacks the saved image's root filesystem and runs reinsd from it as uid/gid 65532, no
# supplementary groups, no capabilities, no_new_privs, a read-only root, no HOME and an
# empty environment but for REINS_* (chroot via `unshare --root`, after `setpriv`). Then:
# gRPC health SERVING (grpcurl), a `sleep` task COMPLETED (the reins CLI), SIGTERM → exit
# 0; and, when redis-server is installed, the same against Redis named by host name
# (glibc's resolver in the distroless root).
#
#   tests/deploy/image.sh [REINSD]
#
# REINSD: $REINSD_BIN, else target/release/reinsd, else target/debug/reinsd; the `reins`
# CLI is taken from the same directory. Installs podman when neither podman nor buildah
# is there and apt-get can (else, or when not root: skipped, exit 0), and grpcurl into the venv of
# tests/deploy/requirements.txt. Prints the install and build times and closes with
# `image: N passed, N failed`.
set -euo pipefail
suite=image
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

reinsd="${1:-${REINSD_BIN:-}}"
if [[ -z "$reinsd" ]]; then
  for candidate in "$repo/target/release/reinsd" "$repo/target/debug/reinsd"; do
    if [[ -x "$candidate" ]]; then reinsd="$candidate"; break; fi
  done
fi
if [[ -z "$reinsd" || ! -x "$reinsd" ]]; then
  echo "image.sh: no reinsd binary (${reinsd:-none found}): build it or pass its path" >&2
  exit 1
fi
reinsd="$(cd "$(dirname "$reinsd")" && pwd)/$(basename "$reinsd")"
cli="$(dirname "$reinsd")/reins"
[[ -x "$cli" ]] || { echo "image.sh: no reins CLI next to $reinsd" >&2; exit 1; }
if [[ "$(id -u)" -ne 0 ]]; then
  skip "image" "needs root (installing podman, unpacking an image with its owners, chroot, setuid)"
  finish
  exit $?
fi

# -- a builder ---------------------------------------------------------------------------
tool="${REINS_IMAGE_TEST_TOOL:-}" # podman or buildah; default: the first found
for candidate in podman buildah; do
  [[ -z "$tool" ]] || break
  if command -v "$candidate" >/dev/null 2>&1; then tool="$candidate"; break; fi
done
if [[ -z "$tool" ]]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "== installing podman (apt-get, no recommends)"
    started="$(now)"
    export DEBIAN_FRONTEND=noninteractive
    if { apt-get install -y -qq --no-install-recommends podman >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get install -y -qq --no-install-recommends podman >/dev/null; }; } &&
      command -v podman >/dev/null 2>&1; then
      tool=podman
      echo "timing: podman installed in $(elapsed "$started") s"
    fi
  fi
fi
if [[ -z "$tool" ]]; then
  skip "image build" "neither podman nor buildah is available or installable here"
  finish
  exit $?
fi
echo "== $tool $("$tool" --version | awk '{print $NF}')"

deploy_venv
grpcurl="$venv/bin/grpcurl"

work="$(mktemp -d "${TMPDIR:-/tmp}/reins-image-test.XXXXXX")"
tag="localhost/reins:image-test-$$"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]+"${pids[@]}"}"; do
    { kill -KILL "$pid" && wait "$pid"; } 2>/dev/null || true
  done
  "$tool" rmi -f "$tag" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# -- build -------------------------------------------------------------------------------
started="$(now)"
if "$repo/deploy/build-image.sh" --tool "$tool" --tag "$tag" "$reinsd" >"$work/build.log" 2>&1; then
  pass "image builds FROM scratch, offline ($tool, $(elapsed "$started") s)"
  echo "timing: image built in $(elapsed "$started") s"
else
  fail "image build" "$(tail -5 "$work/build.log")"
  finish
  exit 1
fi

# -- its root filesystem -----------------------------------------------------------------
# What a user pushes: `save` the image and unpack its layers in order.
mkdir -p "$work/archive" "$work/rootfs"
if [[ "$tool" == podman ]]; then
  podman save --format docker-archive -o "$work/image.tar" "$tag" >/dev/null 2>&1
else
  buildah push "$tag" "docker-archive:$work/image.tar:$tag" >/dev/null 2>&1
fi
tar -xf "$work/image.tar" -C "$work/archive"
layers="$("$venv/bin/python" -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))[0]["Layers"]))' "$work/archive/manifest.json")"
while read -r layer; do
  tar -xf "$work/archive/$layer" --numeric-owner -p -C "$work/rootfs"
done <<<"$layers"
root="$work/rootfs"

# -- the image config --------------------------------------------------------------------
# Read from the saved archive's config blob: what a registry and a kubelet see.
"$venv/bin/python" -c 'import json,sys; d=sys.argv[1]; m=json.load(open(d+"/manifest.json"))[0]; json.dump(json.load(open(d+"/"+m["Config"]))["config"], open(sys.argv[2],"w"))' \
  "$work/archive" "$work/config.json"
version="$("$reinsd" --version | awk '{print $2}')"
if problems="$("$venv/bin/python" - "$work/config.json" "$version" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
version = sys.argv[2]
labels = config.get("Labels") or {}
problems = []
if config.get("User") != "65532:65532":
    problems.append(f"User is {config.get('User')!r}, not 65532:65532")
ports = set(config.get("ExposedPorts") or {})
if ports != {"50051/tcp", "9464/tcp"}:
    problems.append(f"ExposedPorts {sorted(ports)}")
if config.get("Entrypoint") != ["/usr/local/bin/reinsd"]:
    problems.append(f"Entrypoint {config.get('Entrypoint')}")
if any(e.startswith("HOME=") for e in config.get("Env") or []):
    problems.append("Env sets HOME")
for key in ("source", "revision", "version"):
    if not labels.get(f"org.opencontainers.image.{key}"):
        problems.append(f"label org.opencontainers.image.{key} missing")
if labels.get("org.opencontainers.image.version") != version:
    problems.append(f"version label {labels.get('org.opencontainers.image.version')!r} != {version!r}")
print("; ".join(problems))
sys.exit(1 if problems else 0)
PY
)"; then
  pass "config: USER 65532:65532, EXPOSE 50051 9464, OCI labels (version $version), no HOME"
else
  fail "image config" "$problems"
fi


libraries="$(ldd "$reinsd" 2>/dev/null | awk '/=> \//{print $3} /^\t\//{print $1}' | sort || true)"
expected="$(
  {
    echo /usr/local/bin/reinsd
    printf '%s\n' /etc/passwd /etc/group /etc/nsswitch.conf
    [[ ! -f /etc/ssl/certs/ca-certificates.crt ]] || echo /etc/ssl/certs/ca-certificates.crt
    [[ -z "$libraries" ]] || echo "$libraries"
  } | sort
)"
actual="$(cd "$root" && find . -type f ! -path './usr/share/doc/*' | sed 's|^\.||' | sort)"
if [[ "$actual" == "$expected" ]]; then
  pass "rootfs: reinsd, the $(echo "$libraries" | grep -c . || true) libraries ldd lists, passwd/group/nsswitch/CA bundle and licences only"
else
  fail "rootfs contents" "$(diff <(echo "$expected") <(echo "$actual") | tr '\n' ' ')"
fi
shells="$(cd "$root" && find . \( -name sh -o -name bash -o -name busybox -o -name dash \) | tr '\n' ' ')"
others="$(cd "$root" && find . \( ! -user 0 -o ! -group 0 -o -perm -o+w -o -perm -g+w \) | tr '\n' ' ')"
if [[ -z "$shells" && -z "$others" ]] && grep -qx 'nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin' "$root/etc/passwd"; then
  pass "no shell; every file owned by root and writable by no one else; 65532 in /etc/passwd"
else
  fail "rootfs hygiene" "shells: [$shells] not root-owned or group/other-writable: [$others]"
fi

# -- run it as the cluster would ---------------------------------------------------------
# A private mount namespace makes the unpacked root read-only; the runtime's /etc/hosts
# (kubelet mounts one) is added first. setpriv: no_new_privs, a bounding set with only
# what chroot and the switch to 65532 need; `unshare --root` chroots, sets gid 65532 with
# no supplementary groups and uid 65532, which clears every capability, then execs
# reinsd. env -i: no HOME, no PATH, only REINS_* (as a Pod spec gives it).
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n' >"$root/etc/hosts"

start_reinsd() { # name env…  → sets $pid, $address
  local name="$1" line
  shift
  : >"$work/$name.out"
  unshare --mount --propagation private -- sh -c '
    root="$1"; shift
    mount --bind "$root" "$root" && mount -o remount,bind,ro "$root" "$root" &&
    exec env -i "$@" setpriv --no-new-privs --bounding-set=-all,+sys_chroot,+setuid,+setgid -- \
      unshare --root="$root" --setgid 65532 --setuid 65532 -- /usr/local/bin/reinsd' \
    sh "$root" REINS_LISTEN=127.0.0.1:0 REINS_REPLICA_ID="$name" REINS_SHUTDOWN_GRACE=2s "$@" \
    >"$work/$name.out" 2>"$work/$name.err" &
  pid=$!
  pids+=("$pid")
  address=""
  for _ in $(seq 100); do
    line="$(grep -m1 'listening on' "$work/$name.out" || true)"
    if [[ -n "$line" ]]; then address="${line##* }"; return 0; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  return 1
}

check_process() { # pid → problems on stdout
  local status="/proc/$1/status" problems=""
  grep -q $'^Uid:\t65532\t65532\t65532\t65532$' "$status" || problems+="uid; "
  grep -q $'^Gid:\t65532\t65532\t65532\t65532$' "$status" || problems+="gid; "
  [[ -z "$(awk '/^Groups:/{print $2}' "$status")" ]] || problems+="supplementary groups; "
  for cap in CapInh CapPrm CapEff CapAmb; do
    grep -q "^$cap:"$'\t''0000000000000000$' "$status" || problems+="$cap; "
  done
  grep -q $'^NoNewPrivs:\t1$' "$status" || problems+="no_new_privs; "
  [[ "$(readlink "/proc/$1/root")" == "$root" ]] || problems+="root is $(readlink "/proc/$1/root"); "
  awk '$5 == "/" {print $6}' "/proc/$1/mountinfo" | grep -q '^ro' || problems+="root not read-only; "
  ! tr '\0' '\n' <"/proc/$1/environ" | grep -q '^HOME=' || problems+="HOME set; "
  echo "$problems"
}

serving() { # address service
  "$grpcurl" -plaintext -max-time 5 -d "{\"service\":\"$2\"}" "$1" grpc.health.v1.Health/Check 2>&1 |
    grep -q '"status": "SERVING"'
}

sleep_task_completes() { # address → 0 when a sleep task ends COMPLETED
  local id state
  id="$("$cli" --server "$1" --json start sleep --params '{"steps":1,"step_ms":10}' |
    "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["id"])')" || return 1
  timeout 20 "$cli" --server "$1" watch "$id" >/dev/null || return 1
  state="$("$cli" --server "$1" --json check "$id" |
    "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["state"])')"
  [[ "$state" == TASK_STATE_COMPLETED ]]
}

stops_on_sigterm() { # pid → 0 when it exits 0 within 15 s
  local rc=0
  kill -TERM "$1"
  for _ in $(seq 150); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$1" 2>/dev/null; then return 1; fi
  wait "$1" || rc=$?
  [[ $rc -eq 0 ]]
}

scenario() { # label name env…
  local label="$1" name="$2"
  shift 2
  if ! start_reinsd "$name" "$@"; then
    fail "$label: reinsd starts from the image" "$(tail -5 "$work/$name.err")"
    return
  fi
  local problems
  problems="$(check_process "$pid")"
  if [[ -z "$problems" ]]; then
    pass "$label: runs as 65532:65532, no groups, no capabilities, no_new_privs, read-only root, no HOME"
  else
    fail "$label: process identity" "$problems"
  fi
  if serving "$address" "" && serving "$address" reins.v1.TaskService; then
    pass "$label: gRPC health SERVING (\"\" and reins.v1.TaskService)"
  else
    fail "$label: gRPC health" "$("$grpcurl" -plaintext -d '{}' "$address" grpc.health.v1.Health/Check 2>&1 | tr '\n' ' ')"
  fi
  if sleep_task_completes "$address"; then
    pass "$label: a sleep task completes"
  else
    fail "$label: sleep task" "$(tail -3 "$work/$name.err" | tr '\n' ' ')"
  fi
  if stops_on_sigterm "$pid"; then
    pass "$label: SIGTERM → exit 0"
  else
    fail "$label: SIGTERM" "still running or non-zero exit"
  fi
}

scenario "embedded store" image-memory

if command -v redis-server >/dev/null 2>&1; then
  port="$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  mkdir -p "$work/redis"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work/redis" \
    >"$work/redis.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 50); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  scenario "Redis by host name" image-redis REINS_REDIS_URL="redis://localhost:$port" REINS_LEASE_TTL=3s
else
  skip "Redis by host name" "redis-server not installed"
fi

finish

#!/usr/bin/env bash
# Builds the reinsd container image from an already built binary, offline.
#
#   deploy/build-image.sh [--tool podman|buildah|docker|none] [--tag TAG] [--context DIR] [REINSD]
#
# REINSD: the server binary ($REINSD_BIN, else target/release/reinsd, else
# target/debug/reinsd). The script stages a build context (deploy/Containerfile and a
# rootfs/ holding the binary, exactly the shared libraries `ldd` lists for it, /etc/passwd
# and /etc/group entries for uid/gid 65532, /etc/nsswitch.conf and the CA bundle when
# present) and builds `FROM scratch`: no base image, registry or container runtime needed.
#
#   --tool     podman, buildah or docker ($REINS_IMAGE_TOOL; default: the first found);
#              `none` only stages the context (build it yourself: `docker build -f
#              Containerfile -t reins CONTEXT`)
#   --tag      image name ($REINS_IMAGE_TAG; default localhost/reins:VERSION)
#   --context  where to stage (default: a temporary directory, removed afterwards unless
#              --tool none)
#
# Labels: org.opencontainers.image.version from `reinsd --version`, .revision from `git
# rev-parse HEAD`, .source from $REINS_IMAGE_SOURCE or the `origin` remote, .created from
# the commit time (so two builds of one commit differ only if the binary does).
# Prints `image: TAG` last.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

tool="${REINS_IMAGE_TOOL:-}"
tag="${REINS_IMAGE_TAG:-}"
context=""
reinsd="${REINSD_BIN:-}"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --tool) tool="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --context) context="$2"; shift 2 ;;
    -h | --help) usage ;;
    -*) echo "build-image.sh: unknown option $1" >&2; usage ;;
    *) reinsd="$1"; shift ;;
  esac
done

die() { echo "build-image.sh: $*" >&2; exit 1; }

if [[ -z "$reinsd" ]]; then
  for candidate in "$repo/target/release/reinsd" "$repo/target/debug/reinsd"; do
    if [[ -x "$candidate" ]]; then reinsd="$candidate"; break; fi
  done
  [[ -n "$reinsd" ]] || die "no reinsd binary: build one (cargo build --release --bin reinsd) or pass its path"
fi
[[ -x "$reinsd" ]] || die "$reinsd is not an executable file"
reinsd="$(cd "$(dirname "$reinsd")" && pwd)/$(basename "$reinsd")"

if [[ -z "$tool" ]]; then
  for candidate in podman buildah docker; do
    if command -v "$candidate" >/dev/null 2>&1; then tool="$candidate"; break; fi
  done
  [[ -n "$tool" ]] || die "none of podman, buildah, docker found (or pass --tool none to stage only)"
fi
case "$tool" in podman | buildah | docker | none) ;; *) die "unknown --tool $tool" ;; esac

version="$("$reinsd" --version | awk '{print $2}')"
[[ -n "$version" ]] || die "$reinsd --version printed no version"
revision="$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
created="$(git -C "$repo" log -1 --format=%cI 2>/dev/null || echo 1970-01-01T00:00:00Z)"
source_url="${REINS_IMAGE_SOURCE:-$(git -C "$repo" remote get-url origin 2>/dev/null || echo unknown)}"
epoch="$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)"
tag="${tag:-localhost/reins:$version}"

keep_context=0
if [[ -z "$context" ]]; then
  context="$(mktemp -d "${TMPDIR:-/tmp}/reins-image.XXXXXX")"
  trap 'rm -rf "$context"' EXIT
else
  keep_context=1
  [[ ! -e "$context/rootfs" ]] || die "$context/rootfs exists already: pass an empty or new directory"
  mkdir -p "$context"
fi
[[ "$tool" != none ]] || keep_context=1
if [[ $keep_context -eq 1 ]]; then trap - EXIT; fi

root="$context/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs"
install -m 0755 "$reinsd" "$root/usr/local/bin/reinsd"

# Shared libraries: exactly what the dynamic loader resolves for this binary, at the paths
# it resolves them to (the loader's default directories, so no ld.so.cache is needed).
# A static binary lists none.
libraries=()
if ldd_out="$(ldd "$reinsd" 2>&1)"; then
  while read -r line; do
    case "$line" in
      *"not found"*) die "ldd: a library of $reinsd is missing on this host: $line" ;;
      *"=> /"*) path="${line#*=> }"; path="${path%% (*}" ;;
      /*) path="${line%% (*}" ;;
      *) continue ;; # linux-vdso.so.1 and friends: provided by the kernel
    esac
    libraries+=("$path")
  done <<<"$ldd_out"
else
  case "$ldd_out" in
    *"not a dynamic executable"* | *"statically linked"*) ;;
    *) die "ldd $reinsd failed: $ldd_out" ;;
  esac
fi
copyrights=()
for path in "${libraries[@]}"; do
  mkdir -p "$root$(dirname "$path")"
  cp -L "$path" "$root$path" # the file, not the symlink (/lib64/ld-linux-x86-64.so.2 is one)
  chmod 0755 "$root$path"
  if command -v dpkg >/dev/null 2>&1; then
    # Licences of what we redistribute: the owning package's copyright file.
    real="$(readlink -f "$path")"
    package="$(dpkg -S "$path" 2>/dev/null || dpkg -S "$real" 2>/dev/null || true)"
    package="${package%%:*}"
    if [[ -n "$package" && -f "/usr/share/doc/$package/copyright" ]]; then
      copyrights+=("$package")
    fi
  fi
done
for package in $(printf '%s\n' "${copyrights[@]+"${copyrights[@]}"}" | sort -u); do
  mkdir -p "$root/usr/share/doc/$package"
  cp -L "/usr/share/doc/$package/copyright" "$root/usr/share/doc/$package/copyright"
done

# Users: root and nonroot (65532, as in distroless); no login shell, no home.
cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
nonroot:x:65532:
GROUP
# Name resolution (Redis, the OTLP collector by Service name): /etc/hosts and
# /etc/resolv.conf are mounted by the container runtime.
cat >"$root/etc/nsswitch.conf" <<'NSS'
passwd: files
group: files
hosts: files dns
NSS
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
fi
chmod 0644 "$root"/etc/passwd "$root"/etc/group "$root"/etc/nsswitch.conf
find "$root" -type d -exec chmod 0755 {} +
# Reproducible layer: every file gets the commit's time.
find "$root" -exec touch -h -d "@$epoch" {} +
cp "$here/Containerfile" "$context/Containerfile"

echo "build-image.sh: staged $context (reinsd $version, ${#libraries[@]} shared libraries$([[ -f "$root/etc/ssl/certs/ca-certificates.crt" ]] && echo ', CA bundle'))"

build_args=(
  --build-arg "VERSION=$version"
  --build-arg "REVISION=$revision"
  --build-arg "SOURCE=$source_url"
  --build-arg "CREATED=$created"
  -f "$context/Containerfile"
  -t "$tag"
)
case "$tool" in
  none)
    echo "build-image.sh: context only; build it with:"
    printf '  docker build'; printf ' %q' "${build_args[@]}" "$context"; echo
    exit 0
    ;;
  podman) podman build --pull=never --network=none --layers=false "${build_args[@]}" "$context" ;;
  buildah) buildah build --pull=never --network=none --layers=false "${build_args[@]}" "$context" ;;
  docker) docker build "${build_args[@]}" "$context" ;;
esac
echo "image: $tag"

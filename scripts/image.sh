#!/usr/bin/env bash
# Builds the operator image without a Docker engine and pushes it to a
# registry (default: the local cluster's, tests/cluster/up.sh).
#
# The image holds exactly what the binary needs and nothing else: the cargo
# release build of `m2m-operator` at /usr/local/bin/m2m-operator, the shared
# libraries `ldd` names for it (glibc's libc, libm, libgcc_s and the dynamic
# loader), and an /etc/passwd naming the non-root user 65532. No shell, no
# package manager. ENTRYPOINT is the binary; the chart passes the subcommand.
# The Dockerfile builds the same layout for users who have Docker.
#
# Usage: scripts/image.sh [--tag TAG] [--registry HOST:PORT] [--repository NAME]
#                         [--layout DIR] [--no-push] [--no-build]
#   --tag         image tag (default: the crate version, 0.1.0)
#   --registry    where to push (default: the local registry, $M2M_REGISTRY)
#   --repository  repository path in that registry (default: m2m-operator)
#   --layout      OCI layout directory to build into (default: target/oci)
#   --no-push     build the OCI layout only
#   --no-build    do not run cargo (use target/release/m2m-operator as it is)
#
# Prints the pushed reference (registry/repository:tag) on stdout; progress and
# the image size on stderr.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=../tests/cluster/lib.sh
source tests/cluster/lib.sh
# shellcheck source=lib/oci.sh
source scripts/lib/oci.sh

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
tag="$version" registry="$M2M_REGISTRY" repository=m2m-operator layout=target/oci push=1 build=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --registry) registry="$2"; shift 2 ;;
    --repository) repository="$2"; shift 2 ;;
    --layout) layout="$2"; shift 2 ;;
    --no-push) push=0; shift ;;
    --no-build) build=0; shift ;;
    -h | --help) sed -n '2,24s/^# \{0,1\}//p' "$0" >&2; exit 0 ;;
    *) m2m_die "unknown argument: $1" ;;
  esac
done

for tool in umoci skopeo jq; do
  command -v "$tool" >/dev/null || m2m_die "$tool not found (tests/cluster/install.sh installs it)"
done

if ((build)); then
  m2m_log "cargo build --release --bin m2m-operator"
  cargo build --release --locked --bin m2m-operator >&2
fi
bin=target/release/m2m-operator
[[ -x "$bin" ]] || m2m_die "$bin is missing (run without --no-build)"

rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
oci_copy_binary "$rootfs" "$bin" /usr/local/bin/m2m-operator
install -d "$rootfs/etc"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
install -d -m 1777 "$rootfs/tmp"

revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
# The source label: where this tree came from (its git remote), if anywhere.
source_url="${M2M_IMAGE_SOURCE:-$(git config --get remote.origin.url 2>/dev/null || true)}"
source_url="${source_url:-m2m-operator}"
if [[ -n "$(git status --porcelain 2>/dev/null)" ]]; then
  revision="$revision-dirty"
fi
mkdir -p "$(dirname "$layout")"
oci_build "$layout" "$tag" "$rootfs" \
  --config.entrypoint /usr/local/bin/m2m-operator \
  --config.user 65532:65532 \
  --config.label org.opencontainers.image.title=m2m-operator \
  --config.label "org.opencontainers.image.source=$source_url" \
  --config.label "org.opencontainers.image.version=$version" \
  --config.label "org.opencontainers.image.revision=$revision" \
  --config.label org.opencontainers.image.licenses=Apache-2.0 \
  --manifest.annotation "org.opencontainers.image.version=$version" \
  --manifest.annotation "org.opencontainers.image.revision=$revision" >&2

size="$(oci_image_size "$layout" "$tag")"
m2m_log "image $repository:$tag: $((size / 1024)) KiB compressed ($(du -sh "$rootfs" | cut -f1) unpacked), layout $layout"

if ((push)); then
  ref="$registry/$repository:$tag"
  oci_push "$layout" "$tag" "$ref" || m2m_die "could not push $ref"
  m2m_log "pushed $ref"
  printf '%s\n' "$ref"
fi

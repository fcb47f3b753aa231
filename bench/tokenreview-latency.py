#!/usr/bin/env python3
"""TokenReview latency on the local control plane, for docs/workload-identity.md.

Sends N TokenReviews (authentication.k8s.io/v1, with spec.audiences) for one
real service-account token over one kept-alive HTTPS connection, as the token
server does on a cache miss, and prints p50/p90/p99 in milliseconds.

  eval "$(tests/cluster/env.sh)"          # KUBECONFIG of the local control plane
  kubectl create serviceaccount probe -n default
  TOKEN="$(kubectl create token probe -n default --audience https://m2m.example)"
  TOKEN="$TOKEN" python3 bench/tokenreview-latency.py [N]
"""
import http.client, json, os, ssl, sys, time, base64, tempfile
import yaml  # PyYAML

n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
cfg = yaml.safe_load(open(os.environ["KUBECONFIG"]))
cluster = cfg["clusters"][0]["cluster"]
user = cfg["users"][0]["user"]
server = cluster["server"].removeprefix("https://")
ctx = ssl.create_default_context()
if "certificate-authority-data" in cluster:
    ca = tempfile.NamedTemporaryFile(delete=False)
    ca.write(base64.b64decode(cluster["certificate-authority-data"]))
    ca.close()
    ctx.load_verify_locations(ca.name)
else:
    ctx.load_verify_locations(cluster["certificate-authority"])
headers = {"Content-Type": "application/json", "Authorization": "Bearer " + user["token"]}
body = json.dumps({
    "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
    "spec": {"token": os.environ["TOKEN"], "audiences": [os.environ.get("AUDIENCE", "https://m2m.example")]},
})
conn = http.client.HTTPSConnection(server, context=ctx)
samples = []
for i in range(n + 20):
    t = time.perf_counter()
    conn.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body, headers)
    r = conn.getresponse()
    out = json.loads(r.read())
    dt = (time.perf_counter() - t) * 1000
    assert r.status == 201 and out["status"].get("authenticated"), out
    if i >= 20:  # warm-up
        samples.append(dt)
samples.sort()
q = lambda p: samples[min(len(samples) - 1, int(p * len(samples)))]
print(f"TokenReview x{n}: p50 {q(0.50):.2f} ms  p90 {q(0.90):.2f} ms  p99 {q(0.99):.2f} ms  max {samples[-1]:.2f} ms")

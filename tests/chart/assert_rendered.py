#!/usr/bin/env python3
"""Structural assertions on `helm template` output of charts/m2m-operator.

Usage: assert_rendered.py <rendered.yaml> <default|all>

Prints one `ok - <what>` or `not ok - <what>: <why>` line per assertion, so
tests/chart/test.sh can count them. Exits non-zero if any failed. Needs PyYAML
(a dependency of kubernetes-validate, which the chart tests install anyway).
"""

import sys

import yaml

KEYS_SECRET = "m2m-operator-keys"

results = []


def check(what, cond, why=""):
    results.append((what, bool(cond), why))


def load(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def component(obj):
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def one(docs, kind, comp):
    found = [d for d in by_kind(docs, kind) if component(d) == comp]
    return found[0] if len(found) == 1 else None


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def rules_granting(docs, kind, subject_sa, resource, verb):
    """Rules of `kind` (ClusterRole/Role) bound to `subject_sa` that grant `verb` on `resource`."""
    bindings = by_kind(docs, "ClusterRoleBinding" if kind == "ClusterRole" else "RoleBinding")
    role_names = {
        b["roleRef"]["name"]
        for b in bindings
        if b["roleRef"]["kind"] == kind
        and any(s.get("kind") == "ServiceAccount" and s.get("name") == subject_sa for s in b["subjects"])
    }
    out = []
    for role in by_kind(docs, kind):
        if role["metadata"]["name"] not in role_names:
            continue
        for rule in role.get("rules", []):
            if resource in rule.get("resources", []) and (verb in rule["verbs"] or "*" in rule["verbs"]):
                out.append(rule)
    return out


def main():
    path, mode = sys.argv[1], sys.argv[2]
    docs = load(path)

    ctrl = one(docs, "Deployment", "controller")
    ts = one(docs, "Deployment", "token-server")
    check("one controller Deployment", ctrl)
    check("one token-server Deployment", ts)
    if not (ctrl and ts):
        return report()

    services = [s for s in by_kind(docs, "Service") if component(s) == "token-server"]
    check("one token-server Service", len(services) == 1)
    svc = services[0] if services else None

    for name, dep, sub in (("controller", ctrl, "controller"), ("token-server", ts, "token-server")):
        pod = dep["spec"]["template"]["spec"]
        c = pod["containers"][0]
        check(f"{name}: runs subcommand `{sub}`", c.get("args", [None])[0] == sub, c.get("args"))
        psc = pod.get("securityContext", {})
        sc = c.get("securityContext", {})
        check(f"{name}: pod runAsNonRoot", psc.get("runAsNonRoot") is True)
        check(f"{name}: pod seccomp RuntimeDefault", psc.get("seccompProfile", {}).get("type") == "RuntimeDefault")
        check(f"{name}: container runAsNonRoot", sc.get("runAsNonRoot") is True)
        check(f"{name}: readOnlyRootFilesystem", sc.get("readOnlyRootFilesystem") is True)
        check(f"{name}: allowPrivilegeEscalation false", sc.get("allowPrivilegeEscalation") is False)
        check(f"{name}: drops ALL capabilities", sc.get("capabilities", {}).get("drop") == ["ALL"])
        check(f"{name}: container seccomp RuntimeDefault", sc.get("seccompProfile", {}).get("type") == "RuntimeDefault")
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        check(f"{name}: admin port 8081", ports.get("admin") == 8081, ports)
        for probe, path_ in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
            get = c.get(probe, {}).get("httpGet", {})
            check(f"{name}: {probe} {path_} on admin", get.get("path") == path_ and get.get("port") == "admin", get)
        env = env_of(c)
        ns_ref = env.get("M2M_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        check(f"{name}: M2M_NAMESPACE from the downward API", ns_ref == "metadata.namespace")
        if svc:
            check(
                f"{name}: M2M_SERVICE_NAME is the token-server Service",
                env.get("M2M_SERVICE_NAME", {}).get("value") == svc["metadata"]["name"],
            )
        check(f"{name}: M2M_ISSUER set", env.get("M2M_ISSUER", {}).get("value", "").startswith("http"))
        check(f"{name}: own core ServiceAccount", pod.get("serviceAccountName"))

    check(
        "controller and token server use different ServiceAccounts",
        ctrl["spec"]["template"]["spec"]["serviceAccountName"] != ts["spec"]["template"]["spec"]["serviceAccountName"],
    )
    tsc = ts["spec"]["template"]["spec"]["containers"][0]
    check("token-server: http port 8080", {p["name"]: p["containerPort"] for p in tsc["ports"]}.get("http") == 8080)
    cenv = env_of(ctrl["spec"]["template"]["spec"]["containers"][0])
    check("controller: M2M_LEASE_NAME set", cenv.get("M2M_LEASE_NAME", {}).get("value"))
    check("controller: M2M_SIGNING_ALG set", cenv.get("M2M_SIGNING_ALG", {}).get("value") in ("ES256", "EdDSA", "RS256"))
    if svc:
        sports = {p["name"]: p for p in svc["spec"]["ports"]}
        check("Service exposes admin port", sports.get("admin", {}).get("targetPort") == "admin")
        check(
            "Service exposes the token endpoint",
            any(p.get("targetPort") == "http" for p in svc["spec"]["ports"]),
        )

    # --- RBAC: least privilege ------------------------------------------------
    ts_sa = ts["spec"]["template"]["spec"]["serviceAccountName"]
    ctrl_sa = ctrl["spec"]["template"]["spec"]["serviceAccountName"]
    for verb in ("get", "list", "watch", "create", "patch", "update", "delete"):
        check(
            f"token-server: no cluster-wide `{verb}` on secrets",
            not rules_granting(docs, "ClusterRole", ts_sa, "secrets", verb),
        )
    secret_rules = [r for v in ("get", "list", "watch") for r in rules_granting(docs, "Role", ts_sa, "secrets", v)]
    check(
        f"token-server: secrets only `{KEYS_SECRET}` by resourceNames",
        secret_rules and all(r.get("resourceNames") == [KEYS_SECRET] for r in secret_rules),
        secret_rules,
    )
    for verb in ("create", "patch", "update", "delete"):
        check(f"token-server: no `{verb}` on secrets", not rules_granting(docs, "Role", ts_sa, "secrets", verb))
        check(
            f"token-server: no `{verb}` on m2mcredentials",
            not rules_granting(docs, "ClusterRole", ts_sa, "m2mcredentials", verb),
        )
    # Usage tracking: `patch` on m2mcredentials/status, no other status write.
    check(
        "token-server: patches m2mcredentials/status (usage tracking)",
        rules_granting(docs, "ClusterRole", ts_sa, "m2mcredentials/status", "patch"),
    )
    for res, verb in (
        ("m2mcredentials/status", "update"),
        ("m2mcredentials/status", "create"),
        ("m2mcredentials/status", "delete"),
        ("serviceaccounts/status", "patch"),
        ("serviceaccounts/status", "update"),
    ):
        check(
            f"token-server: no `{verb}` on {res}",
            not rules_granting(docs, "ClusterRole", ts_sa, res, verb)
            and not rules_granting(docs, "Role", ts_sa, res, verb),
        )
    cm_patch = rules_granting(docs, "Role", ts_sa, "configmaps", "patch")
    # Per-client revocation lists (`m2m-revoked-tokens-<hash>`) cannot be
    # named in resourceNames: ConfigMaps in the operator namespace only, never
    # cluster-wide.
    check(
        "token-server: patches ConfigMaps (revocation lists) in its own namespace only",
        cm_patch
        and not rules_granting(docs, "ClusterRole", ts_sa, "configmaps", "patch"),
    )
    # Federation reads a static JWK Set (jwks.configMapRef) by name in any
    # namespace: `get` cluster-wide, never list/watch (which would expose
    # every ConfigMap) nor any write.
    for verb in ("list", "watch", "create", "update", "delete"):
        check(
            f"token-server: no cluster-wide `{verb}` on configmaps",
            not rules_granting(docs, "ClusterRole", ts_sa, "configmaps", verb),
        )
    # Workload identity: create TokenReviews, and nothing else around tokens.
    check(
        "token-server: cluster-wide `create` on tokenreviews (workload identity)",
        rules_granting(docs, "ClusterRole", ts_sa, "tokenreviews", "create"),
    )
    for res, verb in (
        ("tokenreviews", "get"),
        ("tokenreviews", "list"),
        ("serviceaccounts/token", "create"),
        ("pods", "get"),
        ("pods", "list"),
    ):
        check(
            f"token-server: no `{verb}` on {res}",
            not rules_granting(docs, "ClusterRole", ts_sa, res, verb)
            and not rules_granting(docs, "Role", ts_sa, res, verb),
        )
    for res in ("m2mcredentials", "serviceaccounts", "namespaces", "m2mroles", "clusterm2mroles"):
        check(f"token-server: cluster-wide watch on {res}", rules_granting(docs, "ClusterRole", ts_sa, res, "watch"))
    # Roles are read by both components and written by neither.
    for sa, who in ((ts_sa, "token-server"), (ctrl_sa, "controller")):
        for res in ("m2mroles", "clusterm2mroles"):
            check(f"{who}: cluster-wide list on {res}", rules_granting(docs, "ClusterRole", sa, res, "list"))
            for verb in ("create", "patch", "update", "delete"):
                check(
                    f"{who}: no `{verb}` on {res}",
                    not rules_granting(docs, "ClusterRole", sa, res, verb)
                    and not rules_granting(docs, "Role", sa, res, verb),
                )
    for res, verb in (
        ("m2mcredentials/status", "patch"),
        ("serviceaccounts/status", "patch"),
        ("secrets", "create"),
        ("secrets", "delete"),
        ("namespaces", "watch"),
        ("events", "create"),
    ):
        check(f"controller: cluster-wide `{verb}` on {res}", rules_granting(docs, "ClusterRole", ctrl_sa, res, verb))
    for verb in ("create", "delete", "update"):
        check(
            f"controller: no `{verb}` on m2mcredentials",
            not rules_granting(docs, "ClusterRole", ctrl_sa, "m2mcredentials", verb),
        )
    lease_rules = rules_granting(docs, "Role", ctrl_sa, "leases", "update")
    lease = cenv.get("M2M_LEASE_NAME", {}).get("value")
    check(
        "controller: updates only its own Lease",
        lease_rules and all(r.get("resourceNames") == [lease] for r in lease_rules),
    )
    for kind in ("ClusterRole", "Role"):
        for role in by_kind(docs, kind):
            for rule in role.get("rules", []):
                check(
                    f"{kind} {role['metadata']['name']}: no wildcards",
                    "*" not in rule.get("verbs", []) and "*" not in rule.get("resources", []),
                    rule,
                )

    # --- PDBs and optional objects --------------------------------------------
    check("controller PodDisruptionBudget", one(docs, "PodDisruptionBudget", "controller"))
    check("token-server PodDisruptionBudget", one(docs, "PodDisruptionBudget", "token-server"))
    hpa = one(docs, "HorizontalPodAutoscaler", "token-server")
    nps = by_kind(docs, "NetworkPolicy")
    sms = by_kind(docs, "ServiceMonitor")
    crds = {d["metadata"]["name"] for d in by_kind(docs, "CustomResourceDefinition")}
    check(
        "both CRDs rendered (--include-crds)",
        {"serviceaccounts.m2m.dev", "m2mcredentials.m2m.dev"} <= crds,
        crds,
    )
    for name, env in (("controller", cenv), ("token-server", env_of(tsc))):
        want = None if mode == "default" else "m2m-default"
        check(
            f"{name}: M2M_DEFAULT_ROLE is config.defaultRole (unset when empty)",
            env.get("M2M_DEFAULT_ROLE", {}).get("value") == want,
            env.get("M2M_DEFAULT_ROLE"),
        )
    restart_kinds = ("deployments", "statefulsets", "daemonsets")
    if mode == "default":
        for res in restart_kinds:
            check(
                f"controller: no `patch` on {res} by default (rbac.restartTargets off)",
                not rules_granting(docs, "ClusterRole", ctrl_sa, res, "patch"),
            )
        check("no HPA by default", hpa is None)
        check("no NetworkPolicy by default", not nps)
        check("no ServiceMonitor by default", not sms)
        check("token-server: replicas 2 by default", ts["spec"].get("replicas") == 2)
        check("controller: replicas 2 by default", ctrl["spec"].get("replicas") == 2)
        check("plain HTTP issuer by default", env_of(tsc)["M2M_ISSUER"]["value"].startswith("http://"))
        check("no TLS flags by default", not any(a.startswith("--tls") for a in tsc["args"]))
    else:
        for res in restart_kinds:
            check(
                f"controller: get and patch on {res} with rbac.restartTargets",
                rules_granting(docs, "ClusterRole", ctrl_sa, res, "patch")
                and rules_granting(docs, "ClusterRole", ctrl_sa, res, "get"),
            )
            for verb in ("create", "update", "delete", "list"):
                check(
                    f"controller: no `{verb}` on {res}",
                    not rules_granting(docs, "ClusterRole", ctrl_sa, res, verb),
                )
        check("HPA targets the token server", hpa and hpa["spec"]["scaleTargetRef"]["name"] == ts["metadata"]["name"])
        check("token-server: no replicas field under HPA", "replicas" not in ts["spec"])
        check("NetworkPolicy for both components", len(nps) == 2)
        check("ServiceMonitor scrapes /metrics on admin", sms and sms[0]["spec"]["endpoints"][0]["port"] == "admin")
        check("TLS: --tls-cert passed", any(a.startswith("--tls-cert=") for a in tsc["args"]), tsc["args"])
        check("TLS: --tls-key passed", any(a.startswith("--tls-key=") for a in tsc["args"]), tsc["args"])
        mounts = {m["name"]: m for m in tsc.get("volumeMounts", [])}
        check("TLS: Secret mounted read-only", mounts.get("tls", {}).get("readOnly") is True)
        check("TLS: https issuer", env_of(tsc)["M2M_ISSUER"]["value"].startswith("https://"))
    return report()


def report():
    failed = 0
    for what, ok, why in results:
        if ok:
            print(f"ok - {what}")
        else:
            failed += 1
            print(f"not ok - {what}: {why}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

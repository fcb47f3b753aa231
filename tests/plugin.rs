//! `kubectl m2m` (the `kubectl-m2m` binary) against the real local control
//! plane (`tests/cluster/up.sh`) and a real operator (`m2m-operator run`,
//! tests/support): the commands a user runs, their output (including
//! `-o json`), and their exit codes and messages when something is missing.

mod support;

use m2m_operator::crd::M2MCredential;
use serde_json::Value;
use std::process::{Command, Output};
use std::time::Duration;
use support::{Operator, TestNamespace, eventually, free_port, kubeconfig_path};

/// Run the plugin with the test cluster's kubeconfig.
fn plugin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-m2m"))
        .args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .output()
        .expect("run kubectl-m2m")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Run and expect exit 0.
fn ok(args: &[&str]) -> String {
    let o = plugin(args);
    assert!(
        o.status.success(),
        "kubectl m2m {args:?} failed ({:?}): {}{}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// A namespace with a running operator, the ServiceAccount `ci-bot`, and
/// the given credentials (`name`, extra spec YAML), all Ready.
async fn fixture(prefix: &str, credentials: &[(&str, &str)]) -> (TestNamespace, Operator) {
    let ns = TestNamespace::new(prefix).await;
    let op = Operator::start(&ns);
    op.wait_ready().await;
    let mut yaml = String::from(
        "apiVersion: m2m.dev/v1alpha1\nkind: ServiceAccount\nmetadata: {name: ci-bot}\nspec:\n  scopes: [\"artifacts:write\", \"repo:read\"]\n",
    );
    for (name, extra) in credentials {
        yaml.push_str(&format!(
            "---\napiVersion: m2m.dev/v1alpha1\nkind: M2MCredential\nmetadata: {{name: {name}}}\nspec:\n  serviceAccountName: ci-bot\n{extra}"
        ));
    }
    let applied = ns.apply_yaml(&yaml);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    for (name, _) in credentials {
        wait_version(&ns, &op, name, 1).await;
    }
    (ns, op)
}

/// Wait until credential `name` is Ready at `version`.
async fn wait_version(
    ns: &TestNamespace,
    op: &Operator,
    name: &str,
    version: i64,
) -> M2MCredential {
    eventually(
        &format!(
            "{name} Ready at version {version}; operator log: {}",
            op.log_text()
        ),
        Duration::from_secs(60),
        || async {
            let c = ns.api::<M2MCredential>().get(name).await.ok()?;
            let s = c.status.as_ref()?;
            let ready = s.conditions.iter().any(|c| {
                c.type_ == "Ready" && c.status == m2m_operator::crd::ConditionStatus::True
            });
            (ready && s.secret_version == version).then_some(c)
        },
    )
    .await
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn status_shows_each_credential_as_a_table_and_as_json() {
    let (ns, _op) = fixture(
        "plugin-status",
        &[
            (
                "uploads",
                "  scopes: [\"artifacts:write\"]\n  rotation: {every: 720h, gracePeriod: 10m}\n",
            ),
            ("reader", "  scopes: [\"repo:read\"]\n"),
        ],
    )
    .await;
    let n = ns.name.as_str();

    let table = ok(&["status", "-n", n]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    for column in [
        "NAME",
        "IDENTITY",
        "TYPE",
        "VERSION",
        "LAST USED",
        "PREVIOUS (IN GRACE)",
        "NEXT ROTATION",
        "EXPIRES",
        "READY",
    ] {
        assert!(lines[0].contains(column), "{column} missing: {table}");
    }
    let cells = |line: &str| {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // Sorted by name: reader, then uploads.
    assert_eq!(
        cells(lines[1])[..4],
        ["reader", "m2msa/ci-bot", "ClientSecret", "1"],
        "{table}"
    );
    assert_eq!(
        cells(lines[2])[..4],
        ["uploads", "m2msa/ci-bot", "ClientSecret", "1"],
        "{table}"
    );
    assert!(
        lines[1].ends_with("True") && lines[2].ends_with("True"),
        "{table}"
    );
    assert!(
        lines[2].contains("in 29d"),
        "next rotation of uploads: {table}"
    );

    let doc = json(&ok(&["status", "-n", n, "-o", "json"]));
    assert_eq!(doc["kind"], "M2MCredentialStatusList");
    let items = doc["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    let uploads = ns.api::<M2MCredential>().get("uploads").await.unwrap();
    let status = uploads.status.unwrap();
    let item = &items[1];
    assert_eq!(item["name"], "uploads");
    assert_eq!(item["namespace"], n);
    assert_eq!(item["type"], "ClientSecret");
    assert_eq!(item["identity"]["name"], "ci-bot");
    assert_eq!(item["identity"]["apiGroup"], "m2m.dev");
    assert_eq!(item["version"], 1);
    assert_eq!(item["ready"], "True");
    assert_eq!(item["clientId"].as_str(), status.client_id.as_deref());
    assert_eq!(item["secretName"], "uploads-credentials");
    assert!(item["nextRotationTime"].is_string(), "{item}");
    assert_eq!(item["previousVersions"], serde_json::json!([]));

    // YAML is the same document; one name narrows to one item; -A adds NAMESPACE.
    let yaml: Value = serde_yaml::from_str(&ok(&["status", "-n", n, "-o", "yaml"])).unwrap();
    assert_eq!(yaml, doc);
    let one = json(&ok(&["status", "reader", "-n", n, "-o", "json"]));
    assert_eq!(one["items"].as_array().unwrap().len(), 1);
    let all = ok(&["status", "-A"]);
    assert!(all.starts_with("NAMESPACE"), "{all}");
    assert!(
        all.lines()
            .any(|l| l.starts_with(n) && l.contains("uploads")),
        "{all}"
    );
    let wide = ok(&["status", "-n", n, "-o", "wide"]);
    assert!(
        wide.contains(status.client_id.as_deref().unwrap()),
        "{wide}"
    );
    // --kubeconfig works like $KUBECONFIG.
    let o = Command::new(env!("CARGO_BIN_EXE_kubectl-m2m"))
        .args(["status", "-n", n, "--kubeconfig"])
        .arg(kubeconfig_path())
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 3);
}

#[tokio::test]
async fn rotate_wait_increments_the_version_and_says_what_the_grace_period_means() {
    let (ns, op) = fixture(
        "plugin-rotate",
        &[
            ("graceful", "  rotation: {gracePeriod: 10m}\n"),
            ("abrupt", "  rotation: {gracePeriod: 0s}\n"),
        ],
    )
    .await;
    let n = ns.name.as_str();

    let out = ok(&["rotate", "graceful", "-n", n, "--wait", "--timeout", "60s"]);
    assert!(
        out.starts_with("m2mcredential.m2m.dev/graceful rotated: version 2 is Ready"),
        "{out}"
    );
    assert!(
        out.contains("previous secret (version 1) keeps working until "),
        "{out}"
    );
    assert!(out.contains("gracePeriod 10m"), "{out}");
    let cred = wait_version(&ns, &op, "graceful", 2).await;
    let annotation = cred.metadata.annotations.unwrap()["m2m.dev/rotate"].clone();
    assert!(
        chrono::DateTime::parse_from_rfc3339(&annotation).is_ok(),
        "{annotation}"
    );
    let doc = json(&ok(&["status", "graceful", "-n", n, "-o", "json"]));
    assert_eq!(doc["items"][0]["version"], 2);
    assert_eq!(doc["items"][0]["previousVersions"][0]["version"], 1);
    let table = ok(&["status", "graceful", "-n", n]);
    assert!(
        table.contains("v1 (ends in 9m") || table.contains("v1 (ends in 10m"),
        "{table}"
    );

    let out = ok(&["rotate", "abrupt", "-n", n, "--wait"]);
    assert!(out.contains("version 2 is Ready"), "{out}");
    assert!(
        out.contains("previous secret (version 1) was revoked at once (gracePeriod 0s)"),
        "{out}"
    );

    // Without --wait: the request is made, the command returns at once.
    let out = ok(&["rotate", "abrupt", "-n", n]);
    assert!(
        out.starts_with("m2mcredential.m2m.dev/abrupt rotation requested"),
        "{out}"
    );
    wait_version(&ns, &op, "abrupt", 3).await;
}

#[tokio::test]
async fn token_fetches_a_verifiable_token_and_decode_refuses_a_tampered_one() {
    let (ns, op) = fixture(
        "plugin-token",
        &[(
            "uploads",
            "  scopes: [\"artifacts:write\", \"repo:read\"]\n",
        )],
    )
    .await;
    let n = ns.name.as_str();
    let token_url = format!("{}/oauth/token", op.url);

    let token = ok(&[
        "token",
        "uploads",
        "-n",
        n,
        "--token-url",
        &token_url,
        "--scope",
        "repo:read",
    ]);
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "{token}");

    // The cluster knows the issuer (the credential's Secret) and its JWKS is reachable.
    let decoded = ok(&["decode", token, "-n", n]);
    assert!(decoded.starts_with("Header:\n"), "{decoded}");
    assert!(
        decoded.contains(&format!("\"sub\": \"m2m:{n}:ci-bot\"")),
        "{decoded}"
    );
    assert!(decoded.contains("\"scope\": \"repo:read\""), "{decoded}");
    assert!(decoded.contains("signature: verified by kid "), "{decoded}");
    let doc = json(&ok(&["decode", token, "-n", n, "-o", "json"]));
    assert_eq!(doc["signature"]["status"], "verified");
    assert_eq!(doc["header"]["typ"], "at+jwt");

    // `token --decode` (a bare base URL gets /oauth/token).
    let decoded = ok(&[
        "token",
        "uploads",
        "-n",
        n,
        "--token-url",
        &op.url,
        "--decode",
    ]);
    assert!(decoded.contains("Claims:"), "{decoded}");
    assert!(decoded.contains("signature: verified by kid "), "{decoded}");

    // Claims swapped, signature kept: INVALID, exit 1.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    claims["scope"] = "artifacts:write repo:read admin".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(claims.to_string()),
        parts[2]
    );
    // Verified against the issuer the cluster knows for the token's client
    // (the credential's Secret in -n), never the token's own iss.
    let o = plugin(&["decode", &forged, "-n", n]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("signature: INVALID"), "{}", stdout(&o));
    assert!(
        stderr(&o).starts_with("error: signature INVALID"),
        "{}",
        stderr(&o)
    );

    // The genuine token, the same way: verified.
    let o = plugin(&["decode", token, "-n", n]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("signature: verified by kid "),
        "{}",
        stdout(&o)
    );
    // No trusted JWKS (a namespace without its credential): shown, not
    // verified, exit 1.
    let o = plugin(&["decode", token, "-n", "default"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("signature: NOT VERIFIED (no trusted JWKS"),
        "{}",
        stdout(&o)
    );
    // JWKS unreachable: shown, not verified, exit 1.
    let nowhere = format!("http://127.0.0.1:{}/.well-known/jwks.json", free_port());
    let o = plugin(&["decode", token, "--jwks-url", &nowhere]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("signature: NOT VERIFIED (JWKS unreachable: "),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).starts_with("error: signature not verified"),
        "{}",
        stderr(&o)
    );

    // A token endpoint that does not answer: the error says what to check.
    let down = format!("http://127.0.0.1:{}/oauth/token", free_port());
    let o = plugin(&["token", "uploads", "-n", n, "--token-url", &down]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with(&format!(
            "error: cannot reach the token endpoint {down} (--token-url)"
        )),
        "{}",
        stderr(&o)
    );
    // A scope outside the credential: the endpoint's RFC 6749 error is shown.
    let o = plugin(&[
        "token",
        "uploads",
        "-n",
        n,
        "--token-url",
        &token_url,
        "--scope",
        "admin",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("refused m2mcredential \"uploads\" (HTTP 400 invalid_scope"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test]
async fn a_missing_credential_is_named_with_the_fix_and_exits_1() {
    let ns = TestNamespace::new("plugin-missing").await;
    let n = ns.name.as_str();
    let want = format!(
        "error: m2mcredential \"nope\" not found in namespace \"{n}\"; list them with kubectl m2m status -n {n}\n"
    );
    for args in [
        vec!["status", "nope", "-n", n],
        vec!["rotate", "nope", "-n", n],
        vec!["rotate", "nope", "-n", n, "--wait"],
        vec!["token", "nope", "-n", n],
    ] {
        let o = plugin(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr(&o), want, "{args:?}");
        assert_eq!(stdout(&o), "", "{args:?}");
    }
    // An empty namespace is not an error (kubectl's wording).
    let o = plugin(&["status", "-n", n]);
    assert!(o.status.success());
    assert_eq!(
        stderr(&o),
        format!("No m2mcredentials found in {n} namespace.\n")
    );
    // Usage errors and unknown contexts exit 1 too.
    assert_eq!(plugin(&["rotate"]).status.code(), Some(1));
    assert_eq!(plugin(&["token", "x", "-A"]).status.code(), Some(1));
    let o = plugin(&["status", "--context", "no-such-context"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no-such-context"), "{}", stderr(&o));
}

/// `token` on an API token exchanges the Secret's `token` (RFC 8693) for a
/// JWT of the same subject, narrowed by `--scope`.
#[tokio::test]
async fn token_exchanges_an_api_token_for_a_jwt() {
    let (ns, op) = fixture(
        "plugin-apitoken",
        &[("reports", "  type: APIToken\n  rotation: {every: 720h}\n")],
    )
    .await;
    let n = ns.name.as_str();
    let token_url = format!("{}/oauth/token", op.url);
    let jwt = ok(&[
        "token",
        "reports",
        "-n",
        n,
        "--token-url",
        &token_url,
        "--scope",
        "repo:read",
    ]);
    let jwt = jwt.trim();
    assert_eq!(jwt.split('.').count(), 3, "{jwt}");
    let doc = json(&ok(&["decode", jwt, "-n", n, "-o", "json"]));
    assert_eq!(doc["signature"]["status"], "verified");
    assert_eq!(doc["claims"]["sub"], format!("m2m:{n}:ci-bot"));
    assert_eq!(doc["claims"]["scope"], "repo:read");
}

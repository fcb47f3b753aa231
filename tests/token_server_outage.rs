//! The token server through an apiserver outage: the `token-server`
//! process reaches the real apiserver only through a TCP proxy this test
//! cuts and restores (the controller and the test itself connect directly,
//! so nothing else is disturbed). While cut it keeps serving its last
//! state and exports the growing age of that state; once restored it
//! catches up within the bounded reconnect backoff, without a restart.

mod support;

use kube::api::{Patch, PatchParams};
use m2m_operator::crd::M2MCredential;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{
    Operator, OperatorOptions, TestNamespace, credential_secret, eventually, kubeconfig_path,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A TCP proxy that can be cut (every connection closed, new ones refused
/// at once) and restored.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (c, conns) = (cut.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: connection closed
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            addr,
            cut,
            connections,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// A copy of the test kubeconfig whose server is the proxy; returns the
/// path and the real apiserver's host:port.
fn proxied_kubeconfig(proxy: &Proxy, dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(kubeconfig_path()).unwrap();
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    for cluster in config["clusters"].as_sequence_mut().unwrap() {
        cluster["cluster"]["server"] = format!("https://{}", proxy.addr).into();
    }
    let path = dir.join("kubeconfig-proxied");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

fn apiserver_addr() -> String {
    let text = std::fs::read_to_string(kubeconfig_path()).unwrap();
    let config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let server = config["clusters"][0]["cluster"]["server"].as_str().unwrap();
    server
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned()
}

async fn token_status(http: &reqwest::Client, base: &str, id: &str, secret: &str) -> u16 {
    http.post(format!("{base}/oauth/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn state_age(http: &reqwest::Client, admin: &str) -> Option<f64> {
    let text = http
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("m2m_token_server_state_age_seconds "))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn token_server_serves_through_an_apiserver_outage_and_catches_up() {
    let ns = TestNamespace::new("ts-outage").await;
    let proxy = Proxy::start(apiserver_addr()).await;
    let dir = std::env::temp_dir().join(format!("m2m-outage-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = proxied_kubeconfig(&proxy, &dir);

    let _controller = Operator::start_with(
        &ns,
        OperatorOptions {
            subcommand: "controller",
            ..Default::default()
        },
    );
    let server = Operator::start_with(
        &ns,
        OperatorOptions {
            subcommand: "token-server",
            env: vec![("KUBECONFIG", kubeconfig.display().to_string())],
            ..Default::default()
        },
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    server.wait_ready().await;
    ns.apply_yaml("apiVersion: m2m.dev/v1alpha1\nkind: ServiceAccount\nmetadata: { name: ci-bot }\nspec: { scopes: [\"repo:read\"] }\n");
    ns.apply_yaml("apiVersion: m2m.dev/v1alpha1\nkind: M2MCredential\nmetadata: { name: uploads }\nspec: { serviceAccountName: ci-bot }\n");
    let (id, secret) = credential_secret(&ns, "uploads", 1, Duration::from_secs(30)).await;
    eventually(
        "token with the first secret",
        Duration::from_secs(5),
        || async { (token_status(&http, &server.url, &id, &secret).await == 200).then_some(()) },
    )
    .await;

    // Outage: the last state keeps being served, and its age grows.
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        token_status(&http, &server.url, &id, &secret).await,
        200,
        "tokens keep being issued from the last synced state"
    );
    let age = state_age(&http, &server.admin_url).await.unwrap();
    assert!(age >= 5.0, "state age reported during the outage: {age}");

    // A rotation the token server cannot see yet (documented staleness).
    ns.api::<M2MCredential>()
        .patch(
            "uploads",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"m2m.dev/rotate": "outage"}}})),
        )
        .await
        .unwrap();
    let (_, secret2) = credential_secret(&ns, "uploads", 2, Duration::from_secs(30)).await;
    assert_eq!(
        token_status(&http, &server.url, &id, &secret).await,
        200,
        "cut off, the token server still has the old state"
    );

    // Restored: caught up within the bounded backoff, no restart.
    proxy.restore();
    let restored = Instant::now();
    eventually(
        "old secret refused after the apiserver returns",
        Duration::from_secs(15),
        || async { (token_status(&http, &server.url, &id, &secret).await == 401).then_some(()) },
    )
    .await;
    println!(
        "caught up {:.2} s after the apiserver returned",
        restored.elapsed().as_secs_f64()
    );
    assert_eq!(token_status(&http, &server.url, &id, &secret2).await, 200);
    let age = eventually(
        "state age back to fresh",
        Duration::from_secs(5),
        || async {
            state_age(&http, &server.admin_url)
                .await
                .filter(|a| *a < 5.0)
        },
    )
    .await;
    assert!(age < 5.0);
    server.wait_ready().await;
}

//! Shared support for integration tests against the real local control
//! plane (`tests/cluster/up.sh`): a client, the CRDs installed once per test
//! binary, a namespace per test, kubectl, and the operator binary run as a
//! real child process scoped to that namespace.
#![allow(dead_code)]

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// Where `tests/cluster/up.sh` writes its kubeconfig.
pub fn kubeconfig_path() -> PathBuf {
    if let Ok(p) = std::env::var("M2M_TEST_KUBECONFIG") {
        return p.into();
    }
    cluster_dir().join("kubeconfig")
}

fn cache_dir() -> PathBuf {
    if let Ok(p) = std::env::var("M2M_CACHE_DIR") {
        return p.into();
    }
    let base = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache"));
    base.join("m2m-operator")
}

/// The state directory of the local control plane (`M2M_CLUSTER_DIR`): logs, PKI.
pub fn cluster_dir() -> PathBuf {
    std::env::var("M2M_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| cache_dir().join("cluster"))
}

/// The directory holding kubectl and helm.
pub fn bin_dir() -> PathBuf {
    cache_dir().join("bin")
}

/// A client for the local control plane. Panics with a clear message when
/// it is not running: integration tests must never silently skip.
pub async fn client() -> Client {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!(
            "no local control plane kubeconfig at {}: run tests/cluster/up.sh ({e})",
            path.display()
        )
    });
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable");
    Client::try_from(config).expect("client")
}

static CRDS: OnceCell<()> = OnceCell::const_new();

/// Install (server-side apply) both CRDs once per test binary and wait until
/// the apiserver serves them.
pub async fn ensure_crds(client: &Client) {
    CRDS.get_or_init(|| async {
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let pp = PatchParams::apply("m2m-operator-tests").force();
        for crd in m2m_operator::crd::crds() {
            let name = crd.metadata.name.clone().expect("crd name");
            api.patch(&name, &pp, &Patch::Apply(&crd))
                .await
                .expect("apply CRD");
            tokio::time::timeout(
                Duration::from_secs(30),
                await_condition(api.clone(), &name, conditions::is_crd_established()),
            )
            .await
            .expect("CRD established in time")
            .expect("watch CRD");
        }
    })
    .await;
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A namespace of its own for one test, deleted when dropped.
pub struct TestNamespace {
    /// Client of the local control plane.
    pub client: Client,
    /// The namespace name.
    pub name: String,
    /// Deleted when dropped (false for [`TestNamespace::existing`]).
    owned: bool,
}

impl TestNamespace {
    /// Connect, install the CRDs, and create a fresh namespace whose name
    /// starts with `prefix`.
    pub async fn new(prefix: &str) -> Self {
        Self::with_annotations(prefix, &[]).await
    }

    /// Like [`TestNamespace::new`], with annotations on the Namespace.
    pub async fn with_annotations(prefix: &str, annotations: &[(&str, &str)]) -> Self {
        let client = client().await;
        ensure_crds(&client).await;
        let name = format!(
            "{}-{}-{}",
            prefix,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.clone());
        ns.metadata.labels = Some([("m2m.dev/test".to_owned(), "true".to_owned())].into());
        if !annotations.is_empty() {
            ns.metadata.annotations = Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
        }
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        Self {
            client,
            name,
            owned: true,
        }
    }

    /// A handle on namespace `name` that exists already (the examples'
    /// `m2m-demo`, say); it is left in place when dropped.
    pub async fn existing(name: &str) -> Self {
        let client = client().await;
        Self {
            client,
            name: name.to_owned(),
            owned: false,
        }
    }

    /// Typed API for namespaced kind `K` in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// `kubectl apply -f -` of `yaml` into this namespace.
    pub fn apply_yaml(&self, yaml: &str) -> Output {
        kubectl_stdin(&["apply", "-n", &self.name, "-f", "-"], yaml)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if !self.owned || std::env::var_os("M2M_TEST_KEEP_NAMESPACES").is_some() {
            return;
        }
        let name = self.name.clone();
        // Drop cannot await: delete from a short-lived runtime of its own,
        // with a client of its own (the test's client is driven by the
        // test's runtime, which is blocked right here).
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let client = client().await;
                let _ = Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::background())
                    .await;
            });
            Ok::<_, std::io::Error>(())
        })
        .join();
    }
}

/// Path of the kubectl binary installed by `tests/cluster/install.sh`.
pub fn kubectl_bin() -> PathBuf {
    let p = bin_dir().join("kubectl");
    if p.exists() {
        p
    } else {
        PathBuf::from("kubectl")
    }
}

/// Run kubectl against the local control plane.
pub fn kubectl(args: &[&str]) -> Output {
    Command::new(kubectl_bin())
        .args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .output()
        .expect("run kubectl")
}

/// Run kubectl with `input` on stdin.
pub fn kubectl_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(kubectl_bin())
        .args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("kubectl output")
}

/// Poll `check` until it returns `Some`, or panic after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The operator binary running as a child process, scoped to one test
/// namespace (which is also its operator namespace). Killed when dropped.
pub struct Operator {
    child: Child,
    /// Token endpoint base URL (`run` and `token-server` only).
    pub url: String,
    /// Admin base URL.
    pub admin_url: String,
    /// Where its stderr log goes.
    pub log: PathBuf,
}

/// How to start the operator for a test.
pub struct OperatorOptions<'a> {
    /// `run`, `controller` or `token-server`.
    pub subcommand: &'a str,
    /// Extra environment (e.g. a failpoint).
    pub env: Vec<(&'a str, String)>,
    /// Extra flags.
    pub args: Vec<String>,
    /// `--issuer` [default: the token endpoint's own URL].
    pub issuer: Option<String>,
    /// The token endpoint's port [default: a free one].
    pub listen_port: Option<u16>,
}

impl Default for OperatorOptions<'_> {
    fn default() -> Self {
        Self {
            subcommand: "run",
            env: vec![],
            args: vec![],
            issuer: None,
            listen_port: None,
        }
    }
}

impl Operator {
    /// Start `m2m-operator run` for `ns`.
    pub fn start(ns: &TestNamespace) -> Self {
        Self::start_with(ns, OperatorOptions::default())
    }

    /// Start the operator with options.
    pub fn start_with(ns: &TestNamespace, opts: OperatorOptions<'_>) -> Self {
        let port = opts.listen_port.unwrap_or_else(free_port);
        let admin = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("m2m-operator-{}-{port}.log", ns.name));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_m2m-operator"));
        cmd.arg(opts.subcommand)
            .args(["--namespace", &ns.name, "--watch-namespace", &ns.name])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--issuer", opts.issuer.as_deref().unwrap_or(&url)])
            .env("KUBECONFIG", kubeconfig_path())
            .env("RUST_LOG", "info,m2m_operator=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        if opts.subcommand != "controller" {
            cmd.args(["--listen", &format!("127.0.0.1:{port}")]);
        }
        cmd.args(&opts.args);
        for (k, v) in opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start m2m-operator");
        Self {
            child,
            url,
            admin_url: format!("http://127.0.0.1:{admin}"),
            log,
        }
    }

    /// Wait until `/readyz` answers 200 (watches synced, keys loaded).
    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.admin_url);
        let http = reqwest::Client::new();
        eventually(&format!("{url} ready"), Duration::from_secs(30), || async {
            let r = http.get(&url).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait for the process to exit on its own (e.g. at a failpoint).
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if start.elapsed() > timeout {
                panic!(
                    "operator did not exit within {timeout:?}; log: {}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ask the process to stop (SIGTERM, as the kubelet does).
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Kill the process at once (SIGKILL: a crash, not a shutdown).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The log so far, for assertion messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The client id and secret of credential `name` once its status and its
/// Secret (`<name>-credentials`, annotation `m2m.dev/secret-version`) are
/// at `version`.
pub async fn credential_secret(
    ns: &TestNamespace,
    name: &str,
    version: i64,
    timeout: Duration,
) -> (String, String) {
    use k8s_openapi::api::core::v1::Secret;
    use m2m_operator::crd::M2MCredential;
    eventually(
        &format!("Secret of {name} at version {version}"),
        timeout,
        || async {
            let cred = ns.api::<M2MCredential>().get(name).await.ok()?;
            (cred.status?.secret_version == version).then_some(())?;
            let s = ns
                .api::<Secret>()
                .get_opt(&format!("{name}-credentials"))
                .await
                .ok()??;
            let held: i64 = s
                .metadata
                .annotations?
                .get("m2m.dev/secret-version")?
                .parse()
                .ok()?;
            (held == version).then_some(())?;
            let data = s.data?;
            let get = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
            Some((get("client_id")?, get("client_secret")?))
        },
    )
    .await
}

/// `POST /oauth/token` (client_credentials, HTTP Basic): the status and
/// the JSON body (`Null` when there is none).
pub async fn client_credentials_token(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    secret: &str,
) -> (u16, serde_json::Value) {
    let r = http
        .post(format!("{base}/oauth/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token endpoint reachable");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// A CA and a serving certificate for 127.0.0.1 signed by it, as PEM files in `dir`.
pub fn make_pki(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    make_pki_for(dir, name, "IP:127.0.0.1")
}

/// A CA and a serving certificate for `san` (an openssl subjectAltName
/// value) signed by it, as PEM files in `dir`: (CA, certificate, key).
pub fn make_pki_for(dir: &Path, name: &str, san: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = dir.join(format!("{name}-ca.key"));
    let ca = dir.join(format!("{name}-ca.crt"));
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let crt = dir.join(format!("{name}.crt"));
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        format!("subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p = |p: &Path| p.to_str().unwrap().to_owned();
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &p(&ca_key),
    ]);
    run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &p(&ca_key),
        "-subj",
        &format!("/CN={name} test CA"),
        "-days",
        "1",
        "-out",
        &p(&ca),
    ]);
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &p(&key),
    ]);
    run(&[
        "req",
        "-new",
        "-key",
        &p(&key),
        "-subj",
        &format!("/CN={name}"),
        "-out",
        &p(&csr),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&ca),
        "-CAkey",
        &p(&ca_key),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &p(&ext),
        "-out",
        &p(&crt),
    ]);
    (ca, crt, key)
}

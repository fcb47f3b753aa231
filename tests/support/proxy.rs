//! A TCP proxy in front of the local kube-apiserver that a test can cut
//! and restore, so one test simulates an apiserver outage for the
//! processes it starts without disturbing any other test.
//!
//! `cut()` closes every proxied connection and stops listening (new
//! connections are refused, as by a stopped apiserver); `restore()` listens
//! again on the same port. `stall()` keeps accepting connections but holds
//! them unanswered (a hung apiserver) until `restore()`. The proxy runs on a runtime of its own, so a
//! test that blocks (e.g. on kubectl) never stalls it.
#![allow(dead_code)]

use kube::config::Kubeconfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy; stopped when dropped.
pub struct Proxy {
    /// Its loopback address.
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
    stalled: watch::Sender<bool>,
    listening: watch::Receiver<bool>,
    accepted: Arc<AtomicUsize>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Listen on a free loopback port, forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("test-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        drop(listener);
        let (up, up_rx) = watch::channel(true);
        let (stalled, stalled_rx) = watch::channel(false);
        let (listening_tx, listening) = watch::channel(false);
        let accepted = Arc::new(AtomicUsize::new(0));
        rt.spawn(supervise(
            addr,
            target,
            up_rx,
            stalled_rx,
            listening_tx,
            accepted.clone(),
        ));
        let proxy = Self {
            addr,
            up,
            stalled,
            listening,
            accepted,
            rt: Some(rt),
        };
        proxy.wait_listening(true).await;
        proxy
    }

    /// A proxy in front of the apiserver of `kubeconfig`.
    pub async fn for_kubeconfig(kubeconfig: &Path) -> Self {
        Self::start(apiserver_addr(kubeconfig)).await
    }

    /// Close every connection and refuse new ones until [`Proxy::restore`].
    pub async fn cut(&self) {
        self.up.send_replace(false);
        self.wait_listening(false).await;
    }

    /// Keep accepting connections but answer nothing on new ones (a hung
    /// apiserver) until [`Proxy::restore`]; established ones keep working.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Accept and forward connections again (on the same port).
    pub async fn restore(&self) {
        self.stalled.send_replace(false);
        self.up.send_replace(true);
        self.wait_listening(true).await;
    }

    /// Connections accepted so far (to check traffic really goes through it).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    async fn wait_listening(&self, want: bool) {
        let mut rx = self.listening.clone();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|l| *l == want))
            .await
            .expect("proxy changed state in time")
            .expect("proxy alive");
    }

    /// Write a copy of `kubeconfig` whose clusters point at this proxy
    /// (same credentials; the apiserver's certificate names 127.0.0.1, which
    /// the proxy's address is too) and return its path.
    pub fn write_kubeconfig(&self, kubeconfig: &Path, name: &str) -> PathBuf {
        let mut config = Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
        for named in &mut config.clusters {
            if let Some(cluster) = named.cluster.as_mut() {
                cluster.server = Some(format!("https://{}", self.addr));
            }
        }
        let path = std::env::temp_dir().join(format!(
            "m2m-proxy-{}-{}-{}.kubeconfig",
            name,
            std::process::id(),
            self.addr.port()
        ));
        std::fs::write(&path, serde_yaml::to_string(&config).expect("yaml"))
            .expect("write kubeconfig");
        path
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The `host:port` of the first cluster in `kubeconfig`.
pub fn apiserver_addr(kubeconfig: &Path) -> SocketAddr {
    let config = Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let server = config
        .clusters
        .iter()
        .find_map(|c| c.cluster.as_ref()?.server.clone())
        .expect("a cluster with a server");
    let host_port = server
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    host_port
        .parse()
        .unwrap_or_else(|e| panic!("apiserver address {host_port:?}: {e}"))
}

/// Listen while `up` says so; on a cut, drop the listener (connections are
/// refused) and every proxied connection.
async fn supervise(
    addr: SocketAddr,
    target: SocketAddr,
    mut up: watch::Receiver<bool>,
    stalled: watch::Receiver<bool>,
    listening: watch::Sender<bool>,
    accepted: Arc<AtomicUsize>,
) {
    loop {
        if up.wait_for(|u| *u).await.is_err() {
            return;
        }
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        listening.send_replace(true);
        let for_connections = up.clone();
        loop {
            tokio::select! {
                conn = listener.accept() => {
                    let Ok((client, _)) = conn else { continue };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(forward(client, target, for_connections.clone(), stalled.clone()));
                }
                changed = up.wait_for(|u| !*u) => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
            }
        }
        drop(listener);
        listening.send_replace(false);
    }
}

async fn forward(
    mut client: TcpStream,
    target: SocketAddr,
    mut up: watch::Receiver<bool>,
    mut stalled: watch::Receiver<bool>,
) {
    // Stalled: hold the connection unanswered until restored or cut.
    tokio::select! {
        r = stalled.wait_for(|s| !*s) => if r.is_err() { return },
        _ = up.wait_for(|u| !*u) => return,
    }
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = up.wait_for(|u| !*u) => {}
    }
    // Dropping both streams closes them.
}

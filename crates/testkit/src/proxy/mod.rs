//! An HTTP/1.1 proxy in front of a registry, for tests and benchmarks: it counts what the registry side
//! sends (to prove laziness), injects faults, and shapes the link (bandwidth cap and added round-trip
//! time, since this kernel has no netem).
//!
//! [`Proxy::start`] listens on a free port of 127.0.0.1 and forwards every request to its upstream
//! (`127.0.0.1:PORT`, e.g. a [`crate::Registry`]) on a new upstream connection, passing the head through
//! unchanged (`Host`, `Range`, `Authorization`, and the response's `Location` included) and the body in
//! its own framing (`Content-Length` or chunked). Clients may send many requests on one keep-alive
//! connection. It runs on its own threads, so it works from sync tests and from `#[tokio::test]` alike,
//! and stops when dropped.
//!
//! Shaping ([`ProxyConfig`]): `rtt / 2` is waited before forwarding each request and `rtt / 2` before the
//! first byte of its response; response bytes leave in chunks (16 KiB) paced by one rate cap shared by
//! all connections, so parallel downloads split the link as on a real one.
//!
//! Faults ([`Fault`], [`FaultKind`]): rules chosen per request by path and kind, for a number of times or
//! with a seeded probability, changeable while running with [`Proxy::set_faults`].
//!
//! ```no_run
//! use clip_testkit::{Fault, FaultKind, Proxy, ProxyConfig, Registry};
//! use std::time::Duration;
//!
//! let registry = Registry::start();
//! let proxy = Proxy::start(&registry.addr(), ProxyConfig::default().with_rate_mbit(100.0).with_rtt(Duration::from_millis(20)));
//! proxy.set_faults(vec![Fault::new(FaultKind::Status(503)).blobs_only().times(1)]);
//! // ... let clip pull proxy.image_ref("repo:tag") ...
//! let stats = proxy.stats();
//! println!("{} blob bytes in {} blob requests", stats.blob_bytes, stats.blob_requests);
//! ```

mod conn;
mod fault;
mod http;
mod shape;

use std::collections::HashMap;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

pub use fault::{Fault, FaultKind};

use fault::Faults;
use shape::Link;

/// Size of the pieces response bytes are paced in.
pub const DEFAULT_CHUNK_SIZE: usize = 16 << 10;

/// How a [`Proxy`] shapes the link and which faults it starts with.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    /// Cap on the bytes per second sent to all clients together (`None`: unlimited).
    pub rate_bytes_per_sec: Option<u64>,
    /// Added round-trip time: half before forwarding each request, half before its response's first byte.
    pub rtt: Duration,
    /// Response bytes are read from the upstream and paced in pieces of this size (default 16 KiB).
    pub chunk_size: usize,
    /// Fault rules active from the start (see [`Proxy::set_faults`]).
    pub faults: Vec<Fault>,
    /// Seed of the RNG behind [`Fault::probability`].
    pub seed: u64,
    /// When set, the counters are written here as JSON ([`ProxyStats::to_json`]) at start and once each
    /// request's response is out (a moment after the client has its last byte), atomically (a temporary
    /// file renamed over it). [`Proxy::stats`] is exact at once: bytes are counted before they are sent.
    pub stats_file: Option<PathBuf>,
    /// How long to wait on a silent upstream before giving up on a request (default 60 s).
    pub upstream_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            rate_bytes_per_sec: None,
            rtt: Duration::ZERO,
            chunk_size: DEFAULT_CHUNK_SIZE,
            faults: Vec::new(),
            seed: 0x5eed,
            stats_file: None,
            upstream_timeout: Duration::from_secs(60),
        }
    }
}

impl ProxyConfig {
    /// Caps the link at `mbit` megabits (10^6 bits) per second.
    pub fn with_rate_mbit(mut self, mbit: f64) -> Self {
        self.rate_bytes_per_sec = Some((mbit * 125_000.0).round().max(1.0) as u64);
        self
    }

    /// Adds this round-trip time to every request.
    pub fn with_rtt(mut self, rtt: Duration) -> Self {
        self.rtt = rtt;
        self
    }

    /// Starts with these fault rules.
    pub fn with_faults(mut self, faults: Vec<Fault>) -> Self {
        self.faults = faults;
        self
    }
}

/// What a proxy has seen since it started or since [`Proxy::reset_stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub connections: u64,
    /// Requests received.
    pub requests: u64,
    /// Blob downloads (`GET /v2/.../blobs/sha256:...`) received.
    pub blob_requests: u64,
    /// Body bytes of blob downloads sent to clients (decoded payload, without chunk framing).
    pub blob_bytes: u64,
    /// Every byte sent to clients: heads, bodies, chunk framing.
    pub bytes: u64,
    /// Requests that carried a `Range` header.
    pub range_requests: u64,
    /// Requests a fault rule fired on.
    pub faults_injected: u64,
    /// One record per request, in the order they arrived, updated as the response goes out.
    pub log: Vec<RequestRecord>,
}

impl ProxyStats {
    /// The counters (not the log) as one JSON object:
    /// `{"requests":..,"blob_requests":..,"blob_bytes":..,"bytes":..,"range_requests":..,"faults_injected":..,"connections":..}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "requests": self.requests,
            "blob_requests": self.blob_requests,
            "blob_bytes": self.blob_bytes,
            "bytes": self.bytes,
            "range_requests": self.range_requests,
            "faults_injected": self.faults_injected,
            "connections": self.connections,
        })
        .to_string()
    }

    /// The records of requests whose target contains `needle`.
    pub fn requests_to(&self, needle: &str) -> Vec<&RequestRecord> {
        self.log.iter().filter(|r| r.path.contains(needle)).collect()
    }
}

/// One request as the proxy handled it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The request target (path and query).
    pub path: String,
    /// The `Range` header the client sent.
    pub range: Option<String>,
    /// The status sent to the client; 0 when no response head was sent (blackhole, broken client).
    pub status: u16,
    /// Body bytes sent to the client (decoded payload).
    pub body_bytes: u64,
    /// The fault injected, by [`FaultKind::name`].
    pub fault: Option<String>,
}

/// Why a proxy could not start or a connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source} (is it a valid HOST:PORT with a free port?)")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Talking to the upstream failed.
    #[error("upstream {addr}: {source} (is the registry running there?)")]
    Upstream {
        /// The upstream address.
        addr: String,
        /// The OS or protocol error.
        source: std::io::Error,
    },
    /// Talking to the client failed (it went away, or sent malformed HTTP).
    #[error("client {peer}: {source}")]
    Client {
        /// The client's address.
        peer: String,
        /// The OS or protocol error.
        source: std::io::Error,
    },
}

/// A running proxy on 127.0.0.1 (or the address given to [`Proxy::bind`]). Stops on drop: the listener
/// closes and every open connection is shut down.
#[derive(Debug)]
pub struct Proxy {
    addr: String,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy on a free port of 127.0.0.1 in front of `upstream` (`HOST:PORT`).
    ///
    /// # Panics
    /// When no port can be bound (a failure is a test failure).
    pub fn start(upstream: &str, config: ProxyConfig) -> Proxy {
        Proxy::bind("127.0.0.1:0", upstream, config).unwrap_or_else(|e| panic!("starting a proxy to {upstream}: {e}"))
    }

    /// Starts a proxy listening on `listen` (`HOST:PORT`; port 0 picks a free one) in front of `upstream`.
    pub fn bind(listen: &str, upstream: &str, config: ProxyConfig) -> Result<Proxy, ProxyError> {
        let bind_err = |source| ProxyError::Bind { addr: listen.to_owned(), source };
        let listener = TcpListener::bind(listen).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?.to_string();
        let shared = Arc::new(Shared {
            addr: addr.clone(),
            upstream: upstream.to_owned(),
            rtt: config.rtt,
            chunk_size: config.chunk_size.max(1),
            upstream_timeout: config.upstream_timeout,
            link: Link::new(config.rate_bytes_per_sec),
            stats: Mutex::new(StatsState::default()),
            faults: Mutex::new(Faults::new(config.faults, config.seed)),
            stop: AtomicBool::new(false),
            sockets: Mutex::new(HashMap::new()),
            next_socket: AtomicU64::new(0),
            stats_file: config.stats_file,
            stats_file_lock: Mutex::new(()),
        });
        shared.write_stats_file();
        let accept_shared = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("clip-proxy-accept".into())
            .spawn(move || accept_loop(&listener, &accept_shared))
            .map_err(bind_err)?;
        tracing::debug!(%addr, upstream, "proxy started");
        Ok(Proxy { addr, shared, accept: Some(accept) })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// The upstream `HOST:PORT`.
    pub fn upstream(&self) -> String {
        self.shared.upstream.clone()
    }

    /// `ADDR/REPO:TAG` (or `ADDR/REPO@DIGEST`) through this proxy, for `repo_ref` = `REPO:TAG`.
    pub fn image_ref(&self, repo_ref: &str) -> String {
        format!("{}/{repo_ref}", self.addr)
    }

    /// A snapshot of the counters and the request log.
    pub fn stats(&self) -> ProxyStats {
        lock(&self.shared.stats).stats.clone()
    }

    /// Zeroes the counters and clears the log.
    pub fn reset_stats(&self) {
        {
            let mut state = lock(&self.shared.stats);
            state.stats = ProxyStats::default();
            state.epoch += 1;
        }
        self.shared.write_stats_file();
    }

    /// Replaces the fault rules (for requests that arrive from now on); `times` counts start afresh.
    pub fn set_faults(&self, faults: Vec<Fault>) {
        lock(&self.shared.faults).set(faults);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop, which sees `stop` and returns, closing the listener.
        let _ = TcpStream::connect(&self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for socket in lock(&self.shared.sockets).values() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

/// State shared by the accept loop and the connection threads.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The proxy's own `HOST:PORT`.
    addr: String,
    upstream: String,
    rtt: Duration,
    chunk_size: usize,
    upstream_timeout: Duration,
    link: Link,
    stats: Mutex<StatsState>,
    faults: Mutex<Faults>,
    stop: AtomicBool,
    /// Every open client and upstream socket, shut down when the proxy stops.
    sockets: Mutex<HashMap<u64, TcpStream>>,
    next_socket: AtomicU64,
    stats_file: Option<PathBuf>,
    stats_file_lock: Mutex<()>,
}

impl Shared {
    /// Whether the proxy is being dropped.
    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Registers `socket` to be shut down when the proxy stops, until the guard drops. A socket that
    /// arrives after the stop is shut down at once.
    fn track(&self, socket: &TcpStream) -> SocketGuard<'_> {
        let id = self.next_socket.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = socket.try_clone() {
            lock(&self.sockets).insert(id, clone);
        }
        if self.stop.load(Ordering::SeqCst) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        SocketGuard { shared: self, id }
    }

    fn update(&self, f: impl FnOnce(&mut ProxyStats)) {
        f(&mut lock(&self.stats).stats);
    }

    /// Counts a request and adds its record to the log; `f` updates the counters in the same step.
    fn begin(&self, record: &RequestRecord, f: impl FnOnce(&mut ProxyStats)) -> Slot {
        let mut state = lock(&self.stats);
        f(&mut state.stats);
        state.stats.log.push(record.clone());
        Slot { epoch: state.epoch, index: state.stats.log.len() - 1 }
    }

    /// Updates the counters and the request's log entry together (the entry unless the stats were reset
    /// since the request arrived). Called before the bytes it counts are written, so a client that has
    /// them sees them counted.
    fn account(&self, slot: Slot, record: &RequestRecord, f: impl FnOnce(&mut ProxyStats)) {
        let mut state = lock(&self.stats);
        f(&mut state.stats);
        if state.epoch == slot.epoch {
            if let Some(entry) = state.stats.log.get_mut(slot.index) {
                entry.clone_from(record);
            }
        }
    }

    /// Logs a finished request and rewrites the stats file.
    fn finish(&self, record: &RequestRecord) {
        tracing::debug!(
            method = %record.method, path = %record.path, status = record.status,
            body_bytes = record.body_bytes, fault = ?record.fault, "proxied"
        );
        self.write_stats_file();
    }

    fn write_stats_file(&self) {
        let Some(path) = &self.stats_file else { return };
        let json = lock(&self.stats).stats.to_json();
        let _guard = lock(&self.stats_file_lock);
        if let Err(error) = write_atomically(path, json.as_bytes()) {
            tracing::warn!(path = %path.display(), %error, "cannot write the proxy stats file");
        }
    }
}

/// The counters with a generation number that [`Proxy::reset_stats`] bumps, so a request that arrived
/// before a reset does not write into the new log.
#[derive(Debug, Default)]
struct StatsState {
    stats: ProxyStats,
    epoch: u64,
}

/// Where a request's record sits in the log.
#[derive(Clone, Copy, Debug)]
struct Slot {
    epoch: u64,
    index: usize,
}

struct SocketGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for SocketGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.sockets).remove(&self.id);
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(%error, "proxy accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let shared = Arc::clone(shared);
        let spawned =
            std::thread::Builder::new().name("clip-proxy-conn".into()).spawn(move || conn::serve(stream, &shared));
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start a proxy connection thread");
        }
    }
}

/// Writes `path` through a temporary file in the same directory and a rename, so readers never see a
/// partial file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Locks a mutex, ignoring poisoning (a panicked connection thread leaves consistent counters).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

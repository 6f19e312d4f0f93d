//! The proxy in front of a real registry: byte counting, keep-alive, shaping (rate cap, rtt), every fault
//! kind, skopeo through it, and the `clip-proxy` binary.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clip_testkit::*;

/// A registry holding `blobs:v1`: one uncompressed layer of a bit over 2 MiB.
struct Fixture {
    registry: Registry,
    layout: OciLayoutBuilder,
    blob: Vec<u8>,
    blob_path: String,
    manifest_path: String,
}

fn fixture() -> Fixture {
    let registry = Registry::start();
    let tar = LayerBuilder::new().dir("data").file("data/random", pseudo_random_bytes(7, (2 << 20) + 4321)).finish();
    let layer = Layer::new(tar, Compression::None);
    let blob = layer.blob().to_vec();
    let mut layout = OciLayoutBuilder::new();
    let built = layout.add_image("v1", &Image::new(vec![layer]));
    registry.push(layout.path(), "v1", "blobs:v1");
    Fixture {
        registry,
        layout,
        blob,
        blob_path: format!("/v2/blobs/blobs/{}", built.layers[0].digest),
        manifest_path: "/v2/blobs/manifests/v1".into(),
    }
}

/// A parsed response.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 client on one keep-alive connection, strict about body lengths.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    host: String,
}

impl Conn {
    fn open(addr: &str) -> Conn {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
        Conn { writer: stream.try_clone().expect("clone"), reader: BufReader::new(stream), host: addr.to_owned() }
    }

    fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> io::Result<Resp> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.writer.write_all(req.as_bytes())?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad(&line))?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').ok_or_else(|| bad(line))?;
            headers.push((k.to_owned(), v.trim().to_owned()));
        }
        let mut resp = Resp { status, headers, body: Vec::new() };
        if method == "HEAD" || status == 204 || status == 304 {
            return Ok(resp);
        }
        if resp.header("Transfer-Encoding").is_some_and(|t| t.contains("chunked")) {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size)?;
                let size = usize::from_str_radix(size.trim(), 16).map_err(|_| bad(&size))?;
                let mut data = vec![0; size + 2];
                self.reader.read_exact(&mut data)?;
                if size == 0 {
                    break;
                }
                resp.body.extend_from_slice(&data[..size]);
            }
        } else if let Some(len) = resp.header("Content-Length") {
            let len: usize = len.parse().map_err(|_| bad(len))?;
            resp.body = vec![0; len];
            self.reader.read_exact(&mut resp.body)?;
        } else {
            self.reader.read_to_end(&mut resp.body)?;
        }
        Ok(resp)
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// One request on a fresh connection.
fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> io::Result<Resp> {
    Conn::open(addr).request("GET", path, headers)
}

fn ok_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    get(addr, path, headers).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

#[test]
fn counts_range_and_whole_blob_bytes() {
    let f = fixture();
    let proxy = Proxy::start(&f.registry.addr(), ProxyConfig::default());

    let r = ok_get(&proxy.addr(), &f.blob_path, &[("Range", "bytes=100-1099")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &f.blob[100..1100]);
    let s = proxy.stats();
    assert_eq!((s.requests, s.blob_requests, s.range_requests, s.blob_bytes), (1, 1, 1, 1000));
    assert!(s.bytes > 1000, "the head counts in total bytes: {s:?}");
    assert_eq!(
        s.log,
        vec![RequestRecord {
            method: "GET".into(),
            path: f.blob_path.clone(),
            range: Some("bytes=100-1099".into()),
            status: 206,
            body_bytes: 1000,
            fault: None,
        }]
    );

    let r = ok_get(&proxy.addr(), &f.blob_path, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, f.blob);
    let s = proxy.stats();
    assert_eq!((s.blob_requests, s.range_requests), (2, 1));
    assert_eq!(s.blob_bytes, 1000 + f.blob.len() as u64);

    // Manifests and HEADs are requests but not blob downloads.
    let r = ok_get(&proxy.addr(), &f.manifest_path, &[("Accept", MEDIA_TYPE_MANIFEST)]);
    assert_eq!(r.status, 200);
    let head = Conn::open(&proxy.addr()).request("HEAD", &f.blob_path, &[]).expect("HEAD");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("Content-Length"), Some(f.blob.len().to_string().as_str()));
    let s = proxy.stats();
    assert_eq!((s.requests, s.blob_requests), (4, 2));
    assert_eq!(s.blob_bytes, 1000 + f.blob.len() as u64);
    assert_eq!(s.log[3].body_bytes, 0, "HEAD has no body");

    proxy.reset_stats();
    assert_eq!(proxy.stats(), ProxyStats::default());
}

#[tokio::test]
async fn works_inside_a_tokio_runtime() {
    let registry = Registry::start();
    let proxy = Proxy::start(&registry.addr(), ProxyConfig::default().with_rtt(Duration::from_millis(20)));
    let addr = proxy.addr();
    let status = tokio::task::spawn_blocking(move || ok_get(&addr, "/v2/", &[]).status).await.expect("join");
    assert_eq!(status, 200);
    assert_eq!(proxy.stats().requests, 1);
    drop(proxy);
}

#[test]
fn serves_several_requests_per_connection() {
    let f = fixture();
    let proxy = Proxy::start(&f.registry.addr(), ProxyConfig::default());
    let mut conn = Conn::open(&proxy.addr());
    let manifest = conn.request("GET", &f.manifest_path, &[("Accept", MEDIA_TYPE_MANIFEST)]).expect("manifest");
    assert_eq!(manifest.status, 200);
    assert_eq!(conn.request("HEAD", &f.blob_path, &[]).expect("HEAD").status, 200);
    let range = conn.request("GET", &f.blob_path, &[("Range", "bytes=0-9")]).expect("range");
    assert_eq!(range.body, &f.blob[..10]);
    let missing = conn.request("GET", "/v2/blobs/manifests/nope", &[]).expect("404");
    assert_eq!(missing.status, 404);
    let s = proxy.stats();
    assert_eq!((s.connections, s.requests), (1, 4));
}

#[test]
fn rate_cap_slows_downloads_and_is_shared_between_connections() {
    let f = fixture();
    let proxy = Proxy::start(&f.registry.addr(), ProxyConfig::default().with_rate_mbit(10.0));
    let two_mib = format!("bytes=0-{}", (2 << 20) - 1);
    let t = Instant::now();
    let r = ok_get(&proxy.addr(), &f.blob_path, &[("Range", &two_mib)]);
    let alone = t.elapsed();
    assert_eq!(r.body.len(), 2 << 20);
    // 2 MiB at 1.25 MB/s: 1.68 s.
    assert!(alone >= Duration::from_millis(1400), "2 MiB at 10 Mbit/s took {alone:?}");
    assert!(alone < Duration::from_secs(10), "2 MiB at 10 Mbit/s took {alone:?}");

    // Two 1 MiB downloads at once share the link: together as long as 2 MiB alone.
    let t = Instant::now();
    std::thread::scope(|s| {
        for start in [0, 1 << 20] {
            let (addr, path) = (proxy.addr(), &f.blob_path);
            s.spawn(move || {
                let range = format!("bytes={start}-{}", start + (1 << 20) - 1);
                assert_eq!(ok_get(&addr, path, &[("Range", &range)]).body.len(), 1 << 20);
            });
        }
    });
    let together = t.elapsed();
    assert!(together >= Duration::from_millis(1400), "2 × 1 MiB in parallel at 10 Mbit/s took {together:?}");
}

#[test]
fn rtt_delays_every_request() {
    let f = fixture();
    let fast = Proxy::start(&f.registry.addr(), ProxyConfig::default());
    let slow = Proxy::start(&f.registry.addr(), ProxyConfig::default().with_rtt(Duration::from_millis(200)));
    let time = |addr: &str| {
        let t = Instant::now();
        assert_eq!(ok_get(addr, "/v2/", &[]).status, 200);
        t.elapsed()
    };
    let (base, delayed) = (time(&fast.addr()), time(&slow.addr()));
    assert!(delayed >= Duration::from_millis(200), "rtt 200 ms, request took {delayed:?}");
    assert!(base < delayed, "without rtt {base:?}, with {delayed:?}");
}

#[test]
fn status_faults_respect_matchers_and_times() {
    let f = fixture();
    let proxy = Proxy::start(&f.registry.addr(), ProxyConfig::default());
    proxy.set_faults(vec![Fault::new(FaultKind::Status(503)).blobs_only().times(2)]);
    let accept = [("Accept", MEDIA_TYPE_MANIFEST)];
    assert_eq!(ok_get(&proxy.addr(), &f.manifest_path, &accept).status, 200, "manifests do not match blobs_only");
    let statuses: Vec<u16> = (0..3).map(|_| ok_get(&proxy.addr(), &f.blob_path, &[]).status).collect();
    assert_eq!(statuses, [503, 503, 200]);
    let s = proxy.stats();
    assert_eq!(s.faults_injected, 2);
    assert_eq!(s.log[1].fault.as_deref(), Some("status 503"));
    assert_eq!((s.log[1].status, s.log[3].status), (503, 200));
    assert_eq!(s.blob_bytes, s.log[1].body_bytes + s.log[2].body_bytes + f.blob.len() as u64, "error bodies count too");

    proxy.set_faults(vec![Fault::new(FaultKind::TooManyRequests { retry_after_secs: 7 }).path_contains("manifests")]);
    let r = ok_get(&proxy.addr(), &f.manifest_path, &accept);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("Retry-After"), Some("7"));
    assert!(String::from_utf8_lossy(&r.body).contains("TOOMANYREQUESTS"));
    assert_eq!(ok_get(&proxy.addr(), &f.blob_path, &[]).status, 200);

    // A locally answered fault leaves the connection usable.
    let mut conn = Conn::open(&proxy.addr());
    assert_eq!(conn.request("GET", &f.manifest_path, &[]).expect("429").status, 429);
    assert_eq!(conn.request("GET", "/v2/", &[]).expect("200").status, 200);
}

#[test]
fn probability_faults_are_seeded() {
    let f = fixture();
    let run = |seed| {
        let config = ProxyConfig { seed, ..ProxyConfig::default() }
            .with_faults(vec![Fault::new(FaultKind::Status(500)).probability(0.5)]);
        let proxy = Proxy::start(&f.registry.addr(), config);
        let statuses: Vec<u16> = (0..24).map(|_| ok_get(&proxy.addr(), "/v2/", &[]).status).collect();
        let failed = statuses.iter().filter(|s| **s == 500).count() as u64;
        assert_eq!(proxy.stats().faults_injected, failed);
        assert!((3..=21).contains(&failed), "{failed} of 24 failed at p = 0.5");
        statuses
    };
    assert_eq!(run(1), run(1));
}

#[test]
fn reset_and_truncate_break_the_body() {
    let f = fixture();
    let proxy = Proxy::start(&f.registry.addr(), ProxyConfig::default());

    proxy.set_faults(vec![Fault::new(FaultKind::ResetMidBody { after_bytes: 1000 }).blobs_only().times(1)]);
    let err = get(&proxy.addr(), &f.blob_path, &[]).expect_err("reset mid-body");
    assert!(matches!(err.kind(), io::ErrorKind::ConnectionReset), "reset seen as {err:?}");
    assert_eq!(proxy.stats().log[0].body_bytes, 1000);
    assert_eq!(ok_get(&proxy.addr(), &f.blob_path, &[]).body, f.blob, "times(1): the next one goes through");

    proxy.set_faults(vec![Fault::new(FaultKind::TruncateBody { after_bytes: 5000 }).blobs_only().times(1)]);
    let err = get(&proxy.addr(), &f.blob_path, &[]).expect_err("truncated body");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err:?}");
    let s = proxy.stats();
    assert_eq!(s.log[2].body_bytes, 5000);
    assert_eq!(s.log[2].fault.as_deref(), Some("truncate-body"));
    assert_eq!(s.faults_injected, 2);
}

#[test]
fn flip_bit_and_ignore_range_change_the_answer() {
    let f = fixture();
    let proxy = Proxy::start(&f.registry.addr(), ProxyConfig::default());

    proxy.set_faults(vec![Fault::new(FaultKind::FlipBit { offset: 20_000 }).blobs_only()]);
    let r = ok_get(&proxy.addr(), &f.blob_path, &[("Range", "bytes=10000-39999")]);
    assert_eq!(r.status, 206);
    let diffs: Vec<usize> = (0..r.body.len()).filter(|i| r.body[*i] != f.blob[10_000 + i]).collect();
    assert_eq!(diffs, [20_000]);
    assert_eq!(r.body[20_000] ^ f.blob[30_000], 1);

    proxy.set_faults(vec![Fault::new(FaultKind::IgnoreRange)]);
    let r = ok_get(&proxy.addr(), &f.blob_path, &[("Range", "bytes=0-99")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, f.blob);
    let s = proxy.stats();
    assert_eq!(s.range_requests, 2);
    assert_eq!(s.log[1].range.as_deref(), Some("bytes=0-99"));
    assert_eq!(s.log[1].body_bytes, f.blob.len() as u64);
}

#[test]
fn redirect_delay_unauthorized_and_blackhole() {
    let f = fixture();
    let target = Proxy::start(&f.registry.addr(), ProxyConfig::default());
    let proxy = Proxy::start(&f.registry.addr(), ProxyConfig::default());

    // Redirect to the other proxy, and follow it there.
    proxy.set_faults(vec![Fault::new(FaultKind::Redirect { to: target.addr() }).blobs_only()]);
    let r = ok_get(&proxy.addr(), &f.blob_path, &[("Range", "bytes=5-14")]);
    assert_eq!(r.status, 307);
    let location = r.header("Location").expect("Location").to_owned();
    assert_eq!(location, format!("http://{}{}", target.addr(), f.blob_path));
    let path = location.strip_prefix(&format!("http://{}", target.addr())).expect("same path");
    assert_eq!(ok_get(&target.addr(), path, &[("Range", "bytes=5-14")]).body, &f.blob[5..15]);
    assert_eq!(target.stats().blob_bytes, 10);
    assert_eq!(proxy.stats().blob_bytes, 0);

    // Delay before the first byte.
    proxy.set_faults(vec![Fault::new(FaultKind::DelayFirstByte(Duration::from_millis(300)))]);
    let t = Instant::now();
    assert_eq!(ok_get(&proxy.addr(), "/v2/", &[]).status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300), "{:?}", t.elapsed());

    // 401; the registry uses no token realm, so there is no challenge to point at.
    proxy.set_faults(vec![Fault::new(FaultKind::Unauthorized).path_contains("manifests")]);
    let r = ok_get(&proxy.addr(), &f.manifest_path, &[]);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("WWW-Authenticate"), None);

    // Blackhole: the request is taken and never answered.
    proxy.set_faults(vec![Fault::new(FaultKind::Blackhole)]);
    let mut conn = Conn::open(&proxy.addr());
    conn.reader.get_ref().set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
    let err = conn.request("GET", "/v2/", &[]).expect_err("no answer");
    assert!(matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut), "{err:?}");
    let s = proxy.stats();
    assert_eq!(s.log.last().map(|r| (r.status, r.fault.as_deref())), Some((0, Some("blackhole"))));
    assert_eq!(s.faults_injected, 4);

    // Dropping the proxy ends the held connection promptly.
    let t = Instant::now();
    drop(proxy);
    assert!(t.elapsed() < Duration::from_secs(2), "drop took {:?}", t.elapsed());
    conn.reader.get_ref().set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut rest = Vec::new();
    match conn.reader.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "bytes after the proxy was dropped: {rest:?}"),
        // A read timeout means the connection is still open; a reset closes it too.
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            panic!("the connection is still open after the proxy was dropped: {e}")
        }
        Err(_) => {}
    }
}

/// A fake upstream that answers every request with `response`, for what the registry cannot do.
fn fake_upstream(response: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = stream.write_all(response);
        }
    });
    addr
}

#[test]
fn unauthorized_points_at_a_bearer_realm_and_chunked_bodies_pass() {
    let challenge = "Bearer realm=\"http://127.0.0.1:9/token\",service=\"fake\"";
    let upstream = fake_upstream(
        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:9/token\",service=\"fake\"\r\nContent-Length: 0\r\n\r\n",
    );
    let proxy = Proxy::start(&upstream, ProxyConfig::default().with_faults(vec![Fault::new(FaultKind::Unauthorized)]));
    let r = ok_get(&proxy.addr(), "/v2/x/manifests/y", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("WWW-Authenticate"), Some(challenge));

    let upstream =
        fake_upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n");
    let proxy = Proxy::start(&upstream, ProxyConfig::default());
    let mut conn = Conn::open(&proxy.addr());
    for _ in 0..2 {
        let r = conn.request("GET", "/v2/x/blobs/sha256:00", &[]).expect("chunked");
        assert_eq!(r.body, b"hello, world");
    }
    let s = proxy.stats();
    assert_eq!((s.connections, s.blob_requests, s.blob_bytes), (1, 2, 24));
}

#[test]
fn skopeo_pushes_and_inspects_through_the_proxy() {
    let f = fixture();
    let proxy = Proxy::start(&f.registry.addr(), ProxyConfig::default().with_rtt(Duration::from_millis(10)));
    push(f.layout.path(), "v1", &proxy.addr(), "viaproxy:v1");
    let s = proxy.stats();
    assert!(s.log.iter().any(|r| r.method == "PATCH" || r.method == "PUT"), "uploads went through: {:?}", s.log);
    assert!(s.log.iter().all(|r| r.status < 400 || r.status == 404 || r.status == 401), "{:?}", s.log);

    let out = run(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{}", proxy.image_ref("viaproxy:v1"))));
    let info: serde_json::Value = serde_json::from_slice(&out).expect("skopeo inspect prints JSON");
    let direct = ok_get(&f.registry.addr(), "/v2/viaproxy/manifests/v1", &[("Accept", MEDIA_TYPE_MANIFEST)]);
    assert_eq!(direct.status, 200, "the push reached the registry");
    assert_eq!(info["Digest"], format!("{}", Digest::sha256(&direct.body)));
    assert!(proxy.stats().requests > s.requests);
}

#[test]
fn binary_writes_stats_and_stops_on_sigterm() {
    let f = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let stats_file = dir.path().join("stats.json");
    let listen = format!("127.0.0.1:{}", find_free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_clip-proxy"))
        .args(["--listen", &listen, "--upstream", &f.registry.addr(), "--rate-mbit", "1000", "--rtt-ms", "2"])
        .arg("--stats-file")
        .arg(&stats_file)
        .stdin(Stdio::null())
        .spawn()
        .expect("run clip-proxy");
    let mut child = KillOnDrop(child);
    let read_stats = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&stats_file).expect("stats file")).expect("stats JSON")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&listen).is_err() || !stats_file.exists() {
        assert!(Instant::now() < deadline, "clip-proxy did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(read_stats()["requests"], 0);

    let r = ok_get(&listen, &f.blob_path, &[("Range", "bytes=0-4095")]);
    assert_eq!(r.body, &f.blob[..4096]);
    // The file is rewritten once the response is out, a moment after the client has it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while read_stats()["requests"] != 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = read_stats();
    assert_eq!((stats["requests"].as_u64(), stats["blob_requests"].as_u64()), (Some(1), Some(1)));
    assert_eq!(stats["blob_bytes"], 4096);
    assert!(stats["bytes"].as_u64().is_some_and(|b| b > 4096));

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.0.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "clip-proxy ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

/// Kills a child process that a failed assertion left running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

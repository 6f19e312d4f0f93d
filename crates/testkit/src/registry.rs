//! A real registry for tests: Debian's `docker-registry` (CNCF distribution 2.8) on 127.0.0.1, with its own
//! storage directory, optionally behind htpasswd basic auth. Killed when dropped.
//!
//! ```no_run
//! use clip_testkit::Registry;
//! let registry = Registry::start();
//! let status = registry.get("/v2/", &[]).status;
//! assert_eq!(status, 200);
//! println!("pull from {}/myrepo:tag", registry.addr());
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use tempfile::TempDir;

use crate::oci::Digest;
use crate::server::{read_log, start_on_free_port};

const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The registry binary Debian's `docker-registry` package installs.
pub const REGISTRY_BINARY: &str = "docker-registry";

/// A running `docker-registry` listening on 127.0.0.1. Killed and waited for on drop; its storage is
/// removed with it.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    addr: String,
    dir: TempDir,
    creds: Option<(String, String)>,
}

impl Registry {
    /// Starts a registry without authentication on a free port and waits until `GET /v2/` answers.
    ///
    /// # Panics
    /// When it cannot start within ~10 s (the message holds the registry's log). Tests that need a
    /// registry fail, they never skip.
    pub fn start() -> Self {
        Self::launch(None)
    }

    /// Starts a registry that requires HTTP basic auth as `user` / `password` (an htpasswd file with a
    /// bcrypt hash). `GET /v2/` without credentials answers 401.
    ///
    /// # Panics
    /// As [`Registry::start`].
    pub fn start_with_auth(user: &str, password: &str) -> Self {
        Self::launch(Some((user.to_owned(), password.to_owned())))
    }

    fn launch(creds: Option<(String, String)>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("clip-registry-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating the registry's temporary directory: {e}"));
        let storage = dir.path().join("storage");
        mkdir(&storage);
        let htpasswd = dir.path().join("htpasswd");
        if let Some((user, pass)) = &creds {
            let hash = bcrypt::hash_with_result(pass, 4)
                .unwrap_or_else(|e| panic!("bcrypt hashing the registry password: {e}"))
                .format_for_version(bcrypt::Version::TwoY);
            write_file(&htpasswd, format!("{user}:{hash}\n").as_bytes());
        }
        let log_path = dir.path().join("registry.log");
        let config = dir.path().join("config.yml");
        let command = |addr: &str| {
            write_file(&config, config_yaml(&storage, addr, creds.as_ref().map(|_| htpasswd.as_path())).as_bytes());
            let mut cmd = Command::new(REGISTRY_BINARY);
            cmd.arg("serve").arg(&config);
            cmd
        };
        let ready = |addr: &str| probe(addr).is_some_and(|status| status == 200 || (creds.is_some() && status == 401));
        let install = "install it: apt-get install docker-registry, or run dev/test";
        let (child, addr) = start_on_free_port(REGISTRY_BINARY, install, &log_path, START_TIMEOUT, command, ready);
        Registry { child, addr, dir, creds }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// `ADDR/REPO:TAG` (or `ADDR/REPO@DIGEST`) for `repo_ref` = `REPO:TAG`.
    pub fn image_ref(&self, repo_ref: &str) -> String {
        format!("{}/{repo_ref}", self.addr)
    }

    /// The `(user, password)` the registry requires, if it was started with auth.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The registry's storage root (`storage.filesystem.rootdirectory`).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps the blob with this digest (tests may corrupt it to check verification).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.storage_dir().join("docker/registry/v2/blobs/sha256").join(&hex[..2.min(hex.len())]).join(hex).join("data")
    }

    /// The registry's log so far (stdout and stderr).
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("registry.log"))
    }

    /// Pushes `tag` of an OCI layout to this registry as `repo_tag`, with the registry's credentials if any
    /// (see [`crate::push`]).
    pub fn push(&self, layout_dir: &Path, tag: &str, repo_tag: &str) {
        crate::oci::push_with_creds(layout_dir, tag, &self.addr, repo_tag, self.credentials());
    }

    /// A plain HTTP/1.0 `GET` of `path` (e.g. `/v2/REPO/manifests/TAG`) with extra headers, sending the
    /// registry's credentials if any.
    ///
    /// # Panics
    /// When the registry cannot be reached or answers garbage.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        let auth = self.credentials().map(|(u, p)| format!("Basic {}", base64(format!("{u}:{p}").as_bytes())));
        let mut all = headers.to_vec();
        if let Some(auth) = &auth {
            all.push(("Authorization", auth));
        }
        http_get(&self.addr, path, &all).unwrap_or_else(|e| panic!("GET http://{}{path}: {e}", self.addr))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP response.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released). Another process
/// may take it before you bind it: retry on "address in use".
///
/// # Panics
/// When no port can be bound on 127.0.0.1.
pub fn find_free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("binding 127.0.0.1:0: {e}"));
    listener.local_addr().unwrap_or_else(|e| panic!("local address of a bound socket: {e}")).port()
}

fn config_yaml(storage: &Path, addr: &str, htpasswd: Option<&Path>) -> String {
    let mut y = format!(
        "version: 0.1\n\
         log:\n  level: info\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: \"{}\"\n  delete:\n    enabled: true\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: \"{addr}\"\n  secret: clip-testkit\n",
        storage.display()
    );
    if let Some(h) = htpasswd {
        y.push_str(&format!("auth:\n  htpasswd:\n    realm: clip-testkit\n    path: \"{}\"\n", h.display()));
    }
    y
}

/// The status of `GET /v2/`, or `None` when nothing answers yet.
fn probe(addr: &str) -> Option<u16> {
    http_get(addr, "/v2/", &[]).ok().map(|r| r.status)
}

/// A plain HTTP/1.0 `GET http://ADDR/PATH` with extra headers (no credentials added), reading the whole
/// response. For poking at a registry directly, e.g. checking that it answers 401 without credentials.
pub fn http_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> std::io::Result<HttpResponse> {
    http_request(addr, "GET", path, headers, &[])
}

/// One HTTP/1.0 request (with `body` when it is not empty), reading the whole response.
pub(crate) fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n");
    if !body.is_empty() || method != "GET" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not an HTTP response: {:?}", String::from_utf8_lossy(&raw[..raw.len().min(200)])),
        )
    })
}

fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(HttpResponse { status, headers, body: raw[end + 4..].to_vec() })
}

/// Standard base64 (RFC 4648, with padding), e.g. for an HTTP basic `Authorization` header.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn mkdir(path: &Path) {
    std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
}

fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn parses_http_response() {
        let r = parse_response(b"HTTP/1.1 401 Unauthorized\r\nWww-Authenticate: Basic realm=x\r\n\r\nbody")
            .expect("valid response");
        assert_eq!(r.status, 401);
        assert_eq!(r.header("WWW-Authenticate"), Some("Basic realm=x"));
        assert_eq!(r.body, b"body");
    }

    #[test]
    fn free_port_is_bindable() {
        let port = find_free_port();
        assert!(TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}

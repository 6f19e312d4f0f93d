//! A real S3 server for tests: `moto_server` from PyPI's `moto[server]` (installed into `.venv` by
//! `dev/setup`) on a free port of 127.0.0.1, with its state in memory. Killed when dropped.
//!
//! By default moto accepts any credentials; [`S3Server::start_with_auth`] makes it check them (an IAM user
//! with `s3:*` is created first, see [`S3Server::credentials`]). To count what the server sends or to
//! inject faults, put a [`crate::Proxy`] in front of [`S3Server::addr`] and hand clip
//! [`S3Server::env_for`] the proxy's address.
//!
//! ```no_run
//! use clip_testkit::S3Server;
//! let s3 = S3Server::start();
//! s3.create_bucket("images");
//! s3.put_object("images", "hello.txt", b"hi");
//! assert_eq!(s3.get_object("images", "hello.txt").as_deref(), Some(&b"hi"[..]));
//! let env = s3.env(); // AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... for a clip child process
//! # let _ = env;
//! ```

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use tempfile::TempDir;

use crate::registry::HttpResponse;
use crate::server::{read_log, start_on_free_port};

/// The server binary of PyPI's `moto[server]`.
pub const MOTO_BINARY: &str = "moto_server";

const START_TIMEOUT: Duration = Duration::from_secs(30);
/// An Authorization header moto accepts while it does not check credentials.
const UNCHECKED_AUTH: &str =
    "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0";
/// Credentials handed to clip when the server does not check them.
const ANY_KEY: (&str, &str) = ("testing", "testing");

/// A running `moto_server` on 127.0.0.1.
#[derive(Debug)]
pub struct S3Server {
    child: Option<Child>,
    addr: String,
    dir: TempDir,
    credentials: (String, String),
    auth: bool,
}

impl S3Server {
    /// Starts moto on a free port and waits until it answers.
    ///
    /// # Panics
    /// When `moto_server` is missing or does not answer within 30 s (the message holds its log). Tests
    /// that need S3 fail, they never skip.
    pub fn start() -> S3Server {
        Self::launch()
    }

    /// Starts moto with request authentication on: only [`S3Server::credentials`] (an IAM user allowed
    /// `s3:*`) are accepted, anything else gets `403 InvalidAccessKeyId` / `SignatureDoesNotMatch`. The
    /// `buckets` are created first (plain requests no longer work afterwards).
    ///
    /// # Panics
    /// As [`S3Server::start`], or when the IAM setup fails.
    pub fn start_with_auth(buckets: &[&str]) -> S3Server {
        let mut s = Self::launch();
        let iam = |body: &str| {
            // moto routes by the service in the credential scope; unsigned requests pass until auth is on.
            let auth = "AWS4-HMAC-SHA256 Credential=AKIASETUP/20240101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0";
            let r = s.request(
                "POST",
                "/",
                &[("Authorization", auth), ("Content-Type", "application/x-www-form-urlencoded")],
                body.as_bytes(),
            );
            let text = String::from_utf8_lossy(&r.body).into_owned();
            assert_eq!(r.status, 200, "moto IAM call {body}: {text}");
            text
        };
        iam("Action=CreateUser&UserName=clip&Version=2010-05-08");
        let key = iam("Action=CreateAccessKey&UserName=clip&Version=2010-05-08");
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
        iam(&format!(
            "Action=PutUserPolicy&UserName=clip&PolicyName=s3&Version=2010-05-08&PolicyDocument={}",
            url_encode(policy)
        ));
        let field = |name: &str| {
            let open = format!("<{name}>");
            let start = key.find(&open).map(|i| i + open.len());
            let end = key.find(&format!("</{name}>"));
            match (start, end) {
                (Some(a), Some(b)) if a <= b => key[a..b].to_owned(),
                _ => panic!("no {name} in moto's CreateAccessKey answer: {key}"),
            }
        };
        s.credentials = (field("AccessKeyId"), field("SecretAccessKey"));
        for b in buckets {
            s.create_bucket(b);
        }
        let r = s.request("POST", "/moto-api/reset-auth", &[("Content-Type", "text/plain")], b"0");
        assert_eq!(r.status, 200, "enabling moto auth: {}", String::from_utf8_lossy(&r.body));
        s.auth = true;
        s
    }

    fn launch() -> S3Server {
        let binary = moto_binary();
        let dir = tempfile::Builder::new()
            .prefix("clip-s3-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating the S3 server's temporary directory: {e}"));
        let log_path = dir.path().join("moto.log");
        let command = |addr: &str| {
            let port = addr.rsplit(':').next().unwrap_or_default();
            let mut cmd = Command::new(&binary);
            cmd.args(["-H", "127.0.0.1", "-p", port]);
            cmd
        };
        let ready = |addr: &str| http(addr, "GET", "/", &[], b"").is_ok_and(|r| r.status == 200);
        let (child, addr) = start_on_free_port(
            MOTO_BINARY,
            "install moto[server]: run dev/setup",
            &log_path,
            START_TIMEOUT,
            command,
            ready,
        );
        let credentials = (ANY_KEY.0.to_owned(), ANY_KEY.1.to_owned());
        S3Server { child: Some(child), addr, dir, credentials, auth: false }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// `http://127.0.0.1:PORT`, the value of `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `(access key id, secret)` the server accepts.
    pub fn credentials(&self) -> (String, String) {
        self.credentials.clone()
    }

    /// Environment for a clip process to reach this server: endpoint, region, credentials, path style.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_for(&self.addr)
    }

    /// [`S3Server::env`] with the endpoint at `addr` (`HOST:PORT`, e.g. a [`crate::Proxy`] in front).
    pub fn env_for(&self, addr: &str) -> Vec<(String, String)> {
        let (id, secret) = self.credentials();
        [
            ("AWS_ENDPOINT_URL", format!("http://{addr}")),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", id),
            ("AWS_SECRET_ACCESS_KEY", secret),
            ("AWS_S3_FORCE_PATH_STYLE", "true".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Creates a bucket (`PUT /BUCKET`).
    ///
    /// # Panics
    /// When moto refuses (after [`S3Server::start_with_auth`], create buckets there instead).
    pub fn create_bucket(&self, bucket: &str) {
        let r = self.request("PUT", &format!("/{bucket}"), &[], b"");
        assert_eq!(r.status, 200, "creating bucket {bucket}: {}", String::from_utf8_lossy(&r.body));
    }

    /// Stores an object with a plain `PUT` (servers without auth only).
    pub fn put_object(&self, bucket: &str, key: &str, data: &[u8]) {
        let r = self.request("PUT", &format!("/{bucket}/{key}"), &[], data);
        assert_eq!(r.status, 200, "putting s3://{bucket}/{key}: {}", String::from_utf8_lossy(&r.body));
    }

    /// An object's bytes with a plain `GET` (servers without auth only); `None` when it does not exist.
    pub fn get_object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let r = self.request("GET", &format!("/{bucket}/{key}"), &[], b"");
        match r.status {
            200 => Some(r.body),
            404 => None,
            s => panic!("getting s3://{bucket}/{key}: status {s}: {}", String::from_utf8_lossy(&r.body)),
        }
    }

    /// Whether the server checks credentials.
    pub fn checks_credentials(&self) -> bool {
        self.auth
    }

    /// Kills the server (to test clients against an S3 that went away). Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("moto.log"))
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
        // moto treats requests without Authorization as anonymous (refused on private buckets); while it
        // does not check credentials, any well-formed header passes.
        let mut all = headers.to_vec();
        if !all.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization")) {
            all.push(("Authorization", UNCHECKED_AUTH));
        }
        http(&self.addr, method, path, &all, body)
            .unwrap_or_else(|e| panic!("{method} http://{}{path}: {e}; moto log:\n{}", self.addr, self.log()))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `moto_server` from PATH, else from the workspace's `.venv` (where `dev/setup` installs it).
fn moto_binary() -> PathBuf {
    if let Some(found) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(MOTO_BINARY))
        .find(|p| p.is_file())
    {
        return found;
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin").join(MOTO_BINARY);
    if venv.is_file() {
        return venv;
    }
    panic!("{MOTO_BINARY} is neither on PATH nor in {} (install moto[server]: run dev/setup)", venv.display());
}

/// One HTTP/1.0 request with a body, reading the whole response.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<HttpResponse> {
    crate::registry::http_request(addr, method, path, headers, body)
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoding_keeps_unreserved_characters() {
        assert_eq!(url_encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(url_encode(r#"{"A":"s3:*"}"#), "%7B%22A%22%3A%22s3%3A%2A%22%7D");
    }
}

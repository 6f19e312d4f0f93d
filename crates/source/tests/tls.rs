//! A registry over HTTPS: its certificate is checked against the platform's roots (here the test's
//! `SSL_CERT_FILE`), which are loaded at the first handshake, not when the client is built. An
//! `openssl s_server` on this machine's own non-loopback address stands in for the registry (loopback
//! registries are spoken to in plain HTTP). These tests fail, not skip, when that server cannot start.

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clip_source::{RegistrySource, SourceOptions};
use common::{free_port, TestRegistry};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("running openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA (`NAME.pem`, `NAME.key`) made in `dir`.
fn ca(dir: &Path, name: &str) {
    let (key, pem, subj) = (format!("{name}.key"), format!("{name}.pem"), format!("/CN={name}"));
    openssl(
        dir,
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &pem, "-days", "1", "-subj", &subj],
    );
}

/// This machine's first global IPv4 address.
fn own_address() -> String {
    let out = Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]).output().expect("running ip");
    let text = String::from_utf8_lossy(&out.stdout);
    let addr = text.split_whitespace().skip_while(|w| *w != "inet").nth(1).expect("a global IPv4 address");
    addr.split('/').next().unwrap().to_owned()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `openssl s_server -www` at `host:port` with a certificate for `host` signed by the CA `ca`.
fn https_server(dir: &Path, ca: &str, host: &str, port: u16) -> Server {
    openssl(
        dir,
        &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=srv"],
    );
    std::fs::write(dir.join("ext.cnf"), format!("subjectAltName=IP:{host}\n")).unwrap();
    let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
    openssl(
        dir,
        &["x509", "-req", "-in", "srv.csr", "-CA", &ca_pem, "-CAkey", &ca_key, "-CAcreateserial", "-out", "srv.pem"]
            .into_iter()
            .chain(["-days", "1", "-extfile", "ext.cnf"])
            .collect::<Vec<_>>(),
    );
    let child = Command::new("openssl")
        .args(["s_server", "-accept", &port.to_string(), "-cert", "srv.pem", "-key", "srv.key", "-www", "-quiet"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting openssl s_server");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect((host, port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not listen on {host}:{port}");
        std::thread::yield_now();
    }
    server
}

#[tokio::test]
async fn a_registry_certificate_is_checked_against_the_platform_roots_loaded_at_the_first_handshake() {
    let dir = tempfile::tempdir().unwrap();
    ca(dir.path(), "trusted");
    ca(dir.path(), "other");
    let host = own_address();
    let port = free_port();
    let _server = https_server(dir.path(), "trusted", &host, port);
    let registry = format!("{host}:{port}");
    let opts = SourceOptions { docker_config: Some(dir.path().to_path_buf()), ..SourceOptions::default() };
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    // nextest runs each test in its own process: no other test sees these variables.
    let with_roots = |file: &Path| std::env::set_var("SSL_CERT_FILE", file);

    // No roots at all: a plain-HTTP registry never needs them, so connecting still works.
    with_roots(&dir.path().join("missing.pem"));
    let plain = TestRegistry::start();
    RegistrySource::connect(&plain.addr, "any/repo", &opts).await.expect("a plain-HTTP registry needs no roots");

    // Roots that do not hold the server's CA: refused, naming the certificate.
    with_roots(&dir.path().join("other.pem"));
    let err = RegistrySource::connect(&registry, "any/repo", &opts).await.map(|_| ()).unwrap_err();
    let text = clip_source::error_chain(&err);
    assert!(text.to_lowercase().contains("certificate"), "{text}");

    // Roots holding it: the handshake succeeds and the registry answers.
    with_roots(&dir.path().join("trusted.pem"));
    RegistrySource::connect(&registry, "any/repo", &opts).await.expect("a certificate from a trusted CA");
}

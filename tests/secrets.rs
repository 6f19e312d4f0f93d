//! End to end, secrets: a registry password and an S3 secret key never appear in anything clip writes —
//! logs at trace level, error messages, the metrics endpoint, `inspect` and `config` output, the index
//! file — during
//! a normal run, a run with faults that make clip authenticate again and follow a redirect, and runs with
//! wrong credentials. Every byte clip prints is searched for the secrets (and for the `Authorization`
//! header value they make).

mod common;

use std::time::Duration;

use clip_testkit::*;
use common::{clip_env, metric, s, MountProc};

const USER: &str = "clip-puller";
const PASSWORD: &str = "Pa55-7f3e-never-print-me";
const WRONG_PASSWORD: &str = "Wr0ng-91c2-never-print-me";

/// Everything clip printed, labelled, for one search.
#[derive(Default)]
struct Collected(Vec<(String, String)>);

impl Collected {
    fn add(&mut self, what: &str, bytes: &[u8]) {
        self.0.push((what.to_owned(), String::from_utf8_lossy(bytes).into_owned()));
    }

    /// Runs clip and collects stdout and stderr; returns whether it succeeded.
    fn run(&mut self, args: &[&str], env: &[(String, String)]) -> bool {
        let out = clip_env(args, env);
        let what = format!("clip {}", args.join(" "));
        self.add(&format!("{what} (stdout)"), &out.stdout);
        self.add(&format!("{what} (stderr)"), &out.stderr);
        out.status.success()
    }

    fn run_ok(&mut self, args: &[&str], env: &[(String, String)]) {
        assert!(self.run(args, env), "clip {args:?} failed:\n{}", self.0.last().unwrap().1);
    }

    /// Whether some output contains `needle` (to show that the logs searched are the verbose ones).
    fn contains(&self, needle: &str) -> bool {
        self.0.iter().any(|(_, text)| text.contains(needle))
    }

    fn assert_free_of(&self, secrets: &[&str]) -> usize {
        let bytes: usize = self.0.iter().map(|(_, text)| text.len()).sum();
        for (what, text) in &self.0 {
            for secret in secrets {
                assert!(!text.contains(secret), "{what} shows a secret ({secret}):\n{text}");
            }
        }
        bytes
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn registry_credentials_never_appear_in_logs_errors_metrics_or_the_index() {
    let registry = Registry::start_with_auth(USER, PASSWORD);
    let mut l = LayerBuilder::new();
    l.file("etc/motd", "hello\n");
    for i in 0..3 {
        l.file(format!("data/blob{i}"), pseudo_random_bytes(i, 2 << 20));
    }
    let mut layout = OciLayoutBuilder::new();
    layout.add_image("t", &Image::from_tars(vec![l.finish()], Compression::Gzip));
    registry.push(layout.path(), "t", "private:t");
    let proxy = Proxy::start(&registry.addr(), ProxyConfig::default());
    let cdn = Proxy::start(&registry.addr(), ProxyConfig::default());

    let dir = tempfile::tempdir().unwrap();
    let docker = |name: &str, password: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let auth = base64(format!("{USER}:{password}").as_bytes());
        let config = format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, proxy.addr());
        std::fs::write(d.join("config.json"), config).unwrap();
        d.display().to_string()
    };
    let good = env(&[("DOCKER_CONFIG", &docker("good", PASSWORD)), ("CLIP_LOG", "trace")]);
    let wrong = env(&[("DOCKER_CONFIG", &docker("wrong", WRONG_PASSWORD)), ("CLIP_LOG", "trace")]);
    let index = dir.path().join("img.clip");
    let (i, image) = (s(&index), proxy.image_ref("private:t"));
    let mut out = Collected::default();

    out.run_ok(&["-vv", "index", &image, "-o", i, "--span-mib", "1"], &good);
    out.run_ok(&["index", &image, "-o", i, "--span-mib", "1"], &good);
    out.run_ok(&["inspect", i], &good);
    out.run_ok(&["inspect", "--json", i], &good);
    out.run_ok(&["ls", "-l", i, "/etc"], &good);
    out.run_ok(&["cat", i, "/etc/motd"], &good);
    out.add("the index file", &std::fs::read(&index).unwrap());
    // The node configuration, with a registry mirror that carries credentials in its URL.
    let mirror = format!("{}=https://{USER}:{PASSWORD}@mirror.example/v2", proxy.addr());
    let with_mirror: Vec<(String, String)> =
        good.iter().cloned().chain(env(&[("CLIP_REGISTRY_MIRRORS", &mirror)])).collect();
    out.run_ok(&["-vv", "config"], &with_mirror);
    assert!(out.contains("mirror.example"), "the mirror is not shown at all");

    // A mount that has to authenticate again (401 mid-run), retry (503) and follow a redirect to a host
    // that must not get the credentials (it answers 401: the registry behind it wants them).
    let addr = format!("127.0.0.1:{}", find_free_port());
    let m =
        MountProc::start_env(index.as_os_str(), &dir.path().join("mnt"), &["--no-cache", "--metrics", &addr], &good);
    let faults = [FaultKind::Unauthorized, FaultKind::Status(503), FaultKind::Redirect { to: cdn.addr() }];
    for (i, fault) in faults.into_iter().enumerate() {
        proxy.set_faults(vec![Fault::new(fault.clone()).blobs_only().times(1)]);
        let got = std::fs::read(m.dir.join(format!("data/blob{i}"))).unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        assert!(got == pseudo_random_bytes(i as u64, 2 << 20), "{fault:?}: wrong bytes");
    }
    assert_eq!(proxy.stats().faults_injected, 3);
    let redirected = cdn.stats();
    assert!(!redirected.requests_to("/blobs/").is_empty(), "the redirect was not followed");
    assert!(
        redirected.requests_to("/blobs/").iter().all(|r| r.status == 401),
        "the redirect target got credentials it must not see: {:?}",
        redirected.log
    );
    assert!(metric(&addr, "clip_fetched_bytes_total") > 0.0);
    out.add("metrics", &http_get(&addr, "/metrics", &[]).unwrap().body);
    out.add("clip mount (stderr)", m.stop().as_bytes());

    // Wrong credentials: failures, with errors that name the registry and never the password.
    let wrong_index = dir.path().join("wrong.clip");
    assert!(!out.run(&["-vv", "index", &image, "-o", s(&wrong_index)], &wrong));
    assert!(out.0.last().unwrap().1.contains("authentication"), "{}", out.0.last().unwrap().1);
    assert!(!out.run(&["cat", i, "/data/blob0"], &wrong));
    proxy.set_faults(vec![Fault::new(FaultKind::Unauthorized).blobs_only()]);
    assert!(!out.run(&["cat", i, "/data/blob0"], &good));

    assert!(out.contains("GET blob range") && out.contains("authenticated"), "no debug logs were searched");
    let searched = out.assert_free_of(&[
        PASSWORD,
        WRONG_PASSWORD,
        &base64(format!("{USER}:{PASSWORD}").as_bytes()),
        &base64(format!("{USER}:{WRONG_PASSWORD}").as_bytes()),
    ]);
    println!("registry secrets: {} outputs, {searched} bytes searched, no secret found", out.0.len());
}

#[test]
fn s3_secret_keys_never_appear_in_logs_errors_or_metrics() {
    let s3 = S3Server::start_with_auth(&["secrets"]);
    let (_, secret) = s3.credentials();
    let wrong_secret = "wRoNg/S3cret+Key-never-print-me0000000000";
    let good: Vec<(String, String)> = s3.env().into_iter().chain(env(&[("CLIP_LOG", "trace")])).collect();
    let wrong: Vec<(String, String)> =
        good.iter()
            .map(|(k, v)| {
                if k == "AWS_SECRET_ACCESS_KEY" {
                    (k.clone(), wrong_secret.to_owned())
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/motd"), "hello from s3\n").unwrap();
    std::fs::write(root.join("blob"), pseudo_random_bytes(5, 1 << 20)).unwrap();
    let url = "s3://secrets/root.clip";
    let mut out = Collected::default();

    out.run_ok(&["-vv", "archive", s(&root), "-o", url], &good);
    out.run_ok(&["inspect", url], &good);
    out.run_ok(&["inspect", "--json", url], &good);
    out.run_ok(&["cat", url, "/etc/motd"], &good);
    let with_store: Vec<(String, String)> =
        good.iter().cloned().chain(env(&[("CLIP_S3_INDEX_STORE", "s3://secrets/indexes")])).collect();
    out.run_ok(&["-vv", "config"], &with_store);
    let addr = format!("127.0.0.1:{}", find_free_port());
    let m = MountProc::start_env(url.as_ref(), &dir.path().join("mnt"), &["--no-cache", "--metrics", &addr], &good);
    assert_eq!(std::fs::read(m.dir.join("blob")).unwrap(), pseudo_random_bytes(5, 1 << 20));
    // The read is counted once its answer is sent: wait for the count, then scrape.
    common::wait_within(Duration::from_secs(10), "the read was not counted", || {
        common::metric(&addr, "clip_fuse_read_bytes_total") > 0.0
    });
    out.add("metrics", &http_get(&addr, "/metrics", &[]).unwrap().body);
    out.add("clip mount (stderr)", m.stop().as_bytes());

    assert!(!out.run(&["-vv", "ls", url], &wrong));
    assert!(!out.run(&["cat", url, "/etc/motd"], &wrong));
    assert!(!out.run(&["-vv", "archive", s(&root), "-o", "s3://secrets/other.clip"], &wrong));

    assert!(out.contains("DEBUG") || out.contains("TRACE"), "no debug logs were searched");
    let searched = out.assert_free_of(&[&secret, wrong_secret]);
    println!("S3 secrets: {} outputs, {searched} bytes searched, no secret found", out.0.len());
}

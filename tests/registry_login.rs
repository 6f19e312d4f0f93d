//! End to end: registries that need a login. `clip index --push`, the index lookup of `clip pull` and the
//! v2 → v1 fallback pull all take their credentials from `$DOCKER_CONFIG/config.json`, like every other
//! registry request clip makes; without credentials they fail with an error that names the registry and
//! says how to log in, and never print the password. A real docker-registry behind htpasswd basic auth,
//! real FUSE mounts, small images made with clip_testkit.

mod common;

use std::process::Output;

use clip_testkit::*;
use common::{app_image, check_app_tree, clip_node, pull_and_gc, s, text};

const USER: &str = "clip-publisher";
const PASSWORD: &str = "Pw-5b1d-login-never-print-me";

/// A registry behind basic auth holding a small two-layer image as `app:v1` and `other:v1`.
struct Fixture {
    registry: Registry,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let registry = Registry::start_with_auth(USER, PASSWORD);
        let image = app_image();
        let mut layout = OciLayoutBuilder::new();
        layout.add_image("v1", &image);
        registry.push(layout.path(), "v1", "app:v1");
        registry.push(layout.path(), "v1", "other:v1");
        Fixture { registry, dir: tempfile::tempdir().unwrap() }
    }

    /// A Docker config directory `name` with credentials for `hosts` (`password` for all).
    fn docker_config(&self, name: &str, hosts: &[String], password: &str) -> String {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let auth = base64(format!("{USER}:{password}").as_bytes());
        let auths: Vec<String> = hosts.iter().map(|h| format!(r#""{h}":{{"auth":"{auth}"}}"#)).collect();
        std::fs::write(d.join("config.json"), format!(r#"{{"auths":{{{}}}}}"#, auths.join(","))).unwrap();
        d.display().to_string()
    }

    /// A fresh node's state and cache directories, and `DOCKER_CONFIG`.
    fn node_env(&self, name: &str, docker_config: &str) -> Vec<(String, String)> {
        let mut env = common::node_env(&self.dir.path().join(name));
        env.push(("DOCKER_CONFIG".into(), docker_config.to_owned()));
        env
    }
}

/// A clean failure (exit 1, an error line, no panic) that names the registry, says how to log in, and
/// shows no secret.
#[track_caller]
fn assert_login_error(out: &Output, registry: &str) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error:") && !stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(&format!("docker login {registry}")), "says how to log in: {stderr}");
    assert!(stderr.contains("DOCKER_CONFIG"), "{stderr}");
    assert!(
        !stderr.contains(PASSWORD) && !stderr.contains(&base64(format!("{USER}:{PASSWORD}").as_bytes())),
        "{stderr}"
    );
    stderr
}

#[test]
fn index_push_and_pull_log_in_with_docker_config_credentials() {
    let f = Fixture::new();
    let registry = f.registry.addr();
    let image = f.registry.image_ref("app:v1");
    let creds = f.docker_config("docker", std::slice::from_ref(&registry), PASSWORD);

    // Publish: resolve, push the artifact and the referrers tag, all with the login.
    let index = f.dir.path().join("app.clip");
    let out = clip_node(&["index", &image, "-o", s(&index), "--push"], &[("DOCKER_CONFIG".into(), creds.clone())]);
    assert!(out.status.success(), "clip index --push: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("published index"), "{}", text(&out.stderr));

    // A clean node finds the published index (referrers tag and artifact read with the login).
    let env = f.node_env("node", &creds);
    let stderr = pull_and_gc(&image, &env, check_app_tree);
    assert!(stderr.contains("index from registry") && stderr.contains("(registry)"), "{stderr}");
    assert!(!stderr.contains("building index"), "no index is built: {stderr}");
    // The prefetch profile lookup logged in too (none is published: no warning, just nothing found).
    assert!(!stderr.contains("fetching the prefetch profile failed"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");

    // No credentials: pull, and publish, fail with the registry named and the fix.
    let none = f.dir.path().join("no-docker-config");
    std::fs::create_dir_all(&none).unwrap();
    let anonymous = f.node_env("anonymous", s(&none));
    let stderr = assert_login_error(&clip_node(&["pull", &image], &anonymous), &registry);
    assert!(stderr.contains(&format!("authentication to {registry} failed")), "{stderr}");
    let out = clip_node(&["index", &image, "-o", s(&f.dir.path().join("x.clip")), "--push"], &anonymous[2..]);
    assert_login_error(&out, &registry);

    // A wrong password: the same, and the wrong password is not printed either.
    let wrong = f.docker_config("wrong", std::slice::from_ref(&registry), "Wrong-9c1e-never-print-me");
    let stderr = assert_login_error(&clip_node(&["pull", &image], &f.node_env("wrong-node", &wrong)), &registry);
    assert!(!stderr.contains("Wrong-9c1e-never-print-me"), "{stderr}");
}

#[test]
fn the_v1_fallback_pull_logs_in_too() {
    let f = Fixture::new();
    // A proxy that strips Range headers: the v2 check sees 200 for a Range GET and falls back to v1,
    // which pulls the whole image from the registry behind basic auth.
    let proxy = Proxy::start(&f.registry.addr(), ProxyConfig::default());
    let creds = f.docker_config("docker", &[f.registry.addr(), proxy.addr()], PASSWORD);
    let env = f.node_env("node", &creds);
    proxy.set_faults(vec![Fault::new(FaultKind::IgnoreRange).blobs_only()]);
    let stderr = pull_and_gc(&proxy.image_ref("other:v1"), &env, check_app_tree);
    assert!(stderr.contains("refuses Range requests") && stderr.contains("falling back to v1"), "{stderr}");
    assert!(stderr.contains("clip v1"), "{stderr}");
    let layer_gets = proxy.stats().log.iter().filter(|r| r.path.contains("/blobs/") && r.status == 200).count();
    assert!(layer_gets >= 2, "whole blobs were downloaded with the login: {:?}", proxy.stats().log);
    assert!(!stderr.contains(PASSWORD), "{stderr}");
}

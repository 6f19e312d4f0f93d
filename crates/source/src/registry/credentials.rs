//! Registry credentials from Docker's `config.json`: `auths` entries (base64 `user:password`,
//! `registrytoken`), `credHelpers` and `credsStore` (running `docker-credential-<name> get`).
//!
//! Nothing read here is ever put into an error or a log line: errors name the file, the key and
//! the helper, never the values.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::auth::RegistryAuth;
use base64::Engine;
use serde::Deserialize;
use tracing::{debug, warn};

use crate::error::SourceError;
use crate::reference::DOCKER_HUB;

/// The key Docker uses for Docker Hub in config.json and with credential helpers.
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
    registrytoken: Option<String>,
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// The credentials clip uses for `registry` (a host as in [`crate::ImageRef`], e.g. `127.0.0.1:5000` or
/// `docker.io`), looked up the way `docker` does: in `opts.docker_config` when set (a file, or a directory
/// holding `config.json`, which must exist), else `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`; there, `credHelpers` for the registry, then its `auths` entry (base64
/// `user:password`, `username`/`password`, `registrytoken`), then `credsStore`. Helpers
/// (`docker-credential-<name>`) are looked up on `$PATH`. No config file, or no entry for the registry:
/// [`RegistryAuth::Anonymous`].
///
/// This is the one lookup behind every registry request clip makes (image pulls, index and profile
/// artifacts, the v1 fallback), so `docker login REGISTRY` (or a `DOCKER_CONFIG` pointing at a config
/// with credentials) is all a registry that needs a login asks for. A credential helper runs on a
/// blocking thread. Errors name the file, key or helper, never a secret.
///
/// ```no_run
/// # async fn demo() -> Result<(), clip_source::SourceError> {
/// let auth = clip_source::registry_auth("127.0.0.1:5000", &clip_source::SourceOptions::default()).await?;
/// # let _ = auth; Ok(()) }
/// ```
pub async fn registry_auth(registry: &str, opts: &crate::SourceOptions) -> Result<RegistryAuth, SourceError> {
    let host = registry.to_owned();
    let config = opts.docker_config.clone();
    tokio::task::spawn_blocking(move || credentials_for(&host, config.as_deref(), &default_helper_dirs()))
        .await
        .map_err(|e| SourceError::Registry {
            registry: registry.to_owned(),
            what: "credential lookup".into(),
            detail: e.to_string(),
        })?
}

/// The default config file: `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
pub(crate) fn default_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker").join("config.json"))
}

/// The directories searched for `docker-credential-*` helpers: `$PATH`.
pub(crate) fn default_helper_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default()
}

/// `docker.io`, `https://index.docker.io/v1/`, `ghcr.io/some/path` → comparable host names.
fn normalize(key: &str) -> String {
    let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
        _ => host,
    }
}

/// Credentials for `registry` (a host as in [`crate::ImageRef`]).
///
/// `config` is an explicit config file (or a directory holding `config.json`) that must exist;
/// `None` uses [`default_config_path`] if it exists and anonymous access otherwise. Helpers are
/// looked up in `helper_dirs` only.
pub(crate) fn credentials_for(
    registry: &str,
    config: Option<&Path>,
    helper_dirs: &[PathBuf],
) -> Result<RegistryAuth, SourceError> {
    let path = match config {
        Some(p) if p.is_dir() => p.join("config.json"),
        Some(p) => p.to_owned(),
        None => match default_config_path() {
            Some(p) if p.exists() => p,
            _ => return Ok(RegistryAuth::Anonymous),
        },
    };
    let bytes = std::fs::read(&path).map_err(|e| SourceError::io(&path, e))?;
    let parsed: DockerConfig = serde_json::from_slice(&bytes).map_err(|e| SourceError::DockerConfig {
        path: path.clone(),
        // serde messages may quote values; only say where the problem is.
        reason: format!("not a valid docker config at line {} column {}", e.line(), e.column()),
    })?;
    let wanted = normalize(registry);

    if let Some((_, helper)) = parsed.cred_helpers.iter().find(|(k, _)| normalize(k) == wanted) {
        debug!(registry, helper = %helper, "using credential helper from credHelpers");
        return run_helper(helper, registry, helper_dirs);
    }
    if let Some((key, entry)) = parsed.auths.iter().find(|(k, _)| normalize(k) == wanted) {
        if let Some(auth) = from_entry(key, entry, &path)? {
            debug!(registry, config = %path.display(), "using credentials from auths");
            return Ok(auth);
        }
    }
    if let Some(store) = &parsed.creds_store {
        debug!(registry, helper = %store, "using credential helper from credsStore");
        return run_helper(store, registry, helper_dirs);
    }
    Ok(RegistryAuth::Anonymous)
}

fn from_entry(key: &str, entry: &AuthEntry, path: &Path) -> Result<Option<RegistryAuth>, SourceError> {
    if let Some(token) = entry.registrytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(RegistryAuth::Bearer(token.to_owned())));
    }
    if let Some(encoded) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let bad = || SourceError::DockerConfig {
            path: path.to_owned(),
            reason: format!("auths.{key:?}.auth is not base64 of USER:PASSWORD"),
        };
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let decoded = engine.decode(encoded.trim()).map_err(|_| bad())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
        let (user, pass) = decoded.split_once(':').ok_or_else(bad)?;
        return Ok(Some(RegistryAuth::Basic(user.to_owned(), pass.to_owned())));
    }
    if let (Some(user), Some(pass)) = (&entry.username, &entry.password) {
        return Ok(Some(RegistryAuth::Basic(user.clone(), pass.clone())));
    }
    if entry.identitytoken.is_some() {
        warn!(
            registry = key,
            "docker config holds an OAuth identity token, which clip cannot use; pulling anonymously"
        );
    }
    Ok(None)
}

/// Runs `docker-credential-<helper> get` with the server on stdin.
fn run_helper(helper: &str, registry: &str, helper_dirs: &[PathBuf]) -> Result<RegistryAuth, SourceError> {
    let fail = |reason: String| SourceError::CredentialHelper {
        helper: helper.to_owned(),
        registry: registry.to_owned(),
        reason,
    };
    if helper.is_empty() || helper.contains(['/', '\0']) {
        return Err(fail("the helper name in the docker config is not a plain name".into()));
    }
    let exe = format!("docker-credential-{helper}");
    let program = helper_dirs
        .iter()
        .map(|dir| dir.join(&exe))
        .find(|p| p.is_file())
        .ok_or_else(|| fail(format!("{exe} is not on PATH (install it or remove it from the docker config)")))?;
    let server = if normalize(registry) == DOCKER_HUB { DOCKER_HUB_SERVER } else { registry };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", program.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(server.as_bytes()).map_err(|e| fail(format!("cannot write to it: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(format!("cannot read its answer: {e}")))?;
    if !out.status.success() {
        // On failure helpers print an error message (no secret) on stdout or stderr.
        let message = String::from_utf8_lossy(if out.stdout.is_empty() { &out.stderr } else { &out.stdout })
            .trim()
            .chars()
            .take(200)
            .collect::<String>();
        if message.contains("credentials not found") {
            debug!(registry, helper, "credential helper has no credentials; pulling anonymously");
            return Ok(RegistryAuth::Anonymous);
        }
        return Err(fail(format!("exited with {}: {message}", out.status)));
    }
    let answer: HelperAnswer = serde_json::from_slice(&out.stdout)
        .map_err(|_| fail("answered something that is not {\"Username\":…,\"Secret\":…} JSON".into()))?;
    if answer.username == "<token>" {
        warn!(
            registry,
            helper, "credential helper returned an OAuth identity token, which clip cannot use; pulling anonymously"
        );
        return Ok(RegistryAuth::Anonymous);
    }
    if answer.username.is_empty() && answer.secret.is_empty() {
        return Ok(RegistryAuth::Anonymous);
    }
    Ok(RegistryAuth::Basic(answer.username, answer.secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn basic(u: &str, p: &str) -> RegistryAuth {
        RegistryAuth::Basic(u.into(), p.into())
    }

    /// A fake helper that knows one server and records what it was asked.
    fn fake_helper(dir: &Path, name: &str) {
        let script = format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 3\nread -r server\necho \"$server\" >> '{log}'\n\
             case \"$server\" in\n  helped.example.com|https://index.docker.io/v1/) \
             echo '{{\"ServerURL\":\"x\",\"Username\":\"helper-user\",\"Secret\":\"helper-secret\"}}' ;;\n  \
             broken.example.com) echo 'not json' ;;\n  \
             *) echo 'credentials not found in native keychain'; exit 1 ;;\nesac\n",
            log = dir.join("asked.log").display()
        );
        let p = write(dir, &format!("docker-credential-{name}"), &script);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn auths_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let encoded = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        let cfg = write(
            tmp.path(),
            "config.json",
            &format!(
                r#"{{"auths":{{
                "https://index.docker.io/v1/":{{"auth":"{encoded}"}},
                "reg.example.com:5000":{{"username":"bob","password":"pw"}},
                "https://tok.example.com/v2/":{{"registrytoken":"tkn"}},
                "empty.example.com":{{}}
            }}}}"#
            ),
        );
        let get = |r: &str| credentials_for(r, Some(&cfg), &[]).unwrap();
        assert_eq!(get("docker.io"), basic("alice", "s3cr:et"));
        assert_eq!(get("reg.example.com:5000"), basic("bob", "pw"));
        assert_eq!(get("tok.example.com"), RegistryAuth::Bearer("tkn".into()));
        assert_eq!(get("empty.example.com"), RegistryAuth::Anonymous);
        assert_eq!(get("other.example.com"), RegistryAuth::Anonymous);
        // A config directory works as well as the file.
        assert_eq!(credentials_for("docker.io", Some(tmp.path()), &[]).unwrap(), basic("alice", "s3cr:et"));
    }

    #[test]
    fn bad_config_errors_never_leak_secrets() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = write(tmp.path(), "config.json", r#"{"auths":{"r.io":{"auth":"!!not-base64-TOPSECRET"}}}"#);
        let err = credentials_for("r.io", Some(&cfg), &[]).unwrap_err().to_string();
        assert!(err.contains("not base64"), "{err}");
        assert!(!err.contains("TOPSECRET"), "{err}");
        let cfg = write(tmp.path(), "bad.json", r#"{"auths":{"r.io":{"auth":12345678}}}"#);
        let err = credentials_for("r.io", Some(&cfg), &[]).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(!err.contains("12345678"), "{err}");
        let missing = tmp.path().join("nope.json");
        assert!(matches!(credentials_for("r.io", Some(&missing), &[]), Err(SourceError::Io { .. })));
    }

    #[test]
    fn cred_helpers_and_store() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        fake_helper(&bin, "fake");
        let dirs = vec![tmp.path().join("empty"), bin.clone()];
        let cfg = write(
            tmp.path(),
            "config.json",
            r#"{"credHelpers":{"helped.example.com":"fake","broken.example.com":"fake","missing.example.com":"absent"},
                "auths":{"auths.example.com":{"username":"u","password":"p"}},
                "credsStore":"fake"}"#,
        );
        let get = |r: &str| credentials_for(r, Some(&cfg), &dirs);
        assert_eq!(get("helped.example.com").unwrap(), basic("helper-user", "helper-secret"));
        // credsStore covers registries without a credHelpers or auths entry…
        assert_eq!(get("docker.io").unwrap(), basic("helper-user", "helper-secret"));
        // …and "not found" from the store means anonymous.
        assert_eq!(get("unknown.example.com").unwrap(), RegistryAuth::Anonymous);
        // An auths entry with credentials wins over the store.
        assert_eq!(get("auths.example.com").unwrap(), basic("u", "p"));
        let err = get("broken.example.com").unwrap_err().to_string();
        assert!(err.contains("docker-credential-fake") && err.contains("JSON"), "{err}");
        let err = get("missing.example.com").unwrap_err().to_string();
        assert!(err.contains("docker-credential-absent is not on PATH"), "{err}");
        let asked = std::fs::read_to_string(tmp.path().join("bin/asked.log")).unwrap();
        assert_eq!(
            asked.lines().collect::<Vec<_>>(),
            ["helped.example.com", "https://index.docker.io/v1/", "unknown.example.com", "broken.example.com"]
        );
    }
}

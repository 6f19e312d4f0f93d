//! The node configuration of `clip pull`/`run`: a TOML file (`/etc/clip/config.toml`, or the one given with
//! `--config`/`CLIP_CONFIG`) under environment variables, over defaults. [`Config::load`] builds it and
//! remembers where every value came from ([`Origin`]), so `clip config` can show the effective settings.
//!
//! ```toml
//! clip_version = 2                 # 1: whole image unpacked into a data-carrying archive; 2: lazy index
//! cache_dir = "/var/cache/clip"    # span cache shared by every mount
//! cache_size = "20G"
//! state_dir = "/var/lib/clip"      # index store, layer parts, mounts, containers
//! runtime = "runc"
//! publish_index = false            # publish indexes built here (registry artifact + S3 index store)
//!
//! [registries."127.0.0.1:5000"]
//! plain_http = true
//! mirrors = ["mirror.local:5000"]
//!
//! [s3]
//! index_store = "s3://bucket/indexes"
//! content_cache = "s3://bucket/spans"
//!
//! [startup]
//! set = true                       # a mount prefetches the index's startup set (entrypoint + its libraries)
//! record_profiles = true           # the first cold run of an image here records its startup profile…
//! publish_profiles = true          # …and publishes it next to the image, for every other node
//! record_seconds = 10              # a recording ends after this long…
//! record_spans = 2048              # …or this many spans
//! ```
//!
//! Environment: `CLIP_VERSION`, `CLIP_CACHE_DIR`, `CLIP_CACHE_SIZE`, `CLIP_STATE_DIR`, `CLIP_RUNTIME`,
//! `CLIP_PUBLISH_INDEX`, `CLIP_STARTUP_SET`, `CLIP_RECORD_PROFILES`, `CLIP_PUBLISH_PROFILES`, `CLIP_S3_INDEX_STORE`, `CLIP_S3_CONTENT_CACHE`, `CLIP_PLAIN_HTTP_REGISTRIES` (`host:port,…`) and
//! `CLIP_REGISTRY_MIRRORS` (`host=mirror,mirror;host2=mirror`).
//!
//! The file holds no secrets (registry credentials come from Docker's config, S3 ones from the AWS
//! environment); unknown keys are refused, and parse errors name the line, never its text.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use clip_s3::S3Url;
use serde::Deserialize;

mod layers;
mod startup;
mod values;

pub use startup::StartupConfig;

pub use values::parse_size;
use values::redact_userinfo;

/// Where the configuration file is looked for when none is given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/clip/config.toml";
/// Default state directory: index store, mounts, containers.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/clip";
/// The layer part store under a state directory: `STATE_DIR/parts` (see [`clip_image::DirParts`]).
pub const PARTS_DIR: &str = "parts";
/// Default bound of the span cache: 10 GiB.
pub const DEFAULT_CACHE_SIZE: u64 = 10 << 30;

/// Why the configuration cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{} (give an existing file with --config or CLIP_CONFIG)", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {message}")]
    Parse { path: PathBuf, line: usize, message: String },
    #[error("{origin}: {key} = {value:?}: {message}")]
    Value { key: &'static str, value: String, origin: Origin, message: String },
}

/// Which archive kind `pull`/`run` mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipVersion {
    /// The whole image unpacked and packed into a data-carrying archive.
    V1,
    /// An index-only archive: file bytes fetched lazily from the registry.
    V2,
}

impl fmt::Display for ClipVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClipVersion::V1 => "1",
            ClipVersion::V2 => "2",
        })
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(p) => write!(f, "file {}", p.display()),
            Origin::Env(var) => write!(f, "env {var}"),
        }
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T> Setting<T> {
    fn default(value: T) -> Setting<T> {
        Setting { value, origin: Origin::Default }
    }

    fn from_file(path: &Path, value: T) -> Setting<T> {
        Setting { value, origin: Origin::File(path.to_path_buf()) }
    }
}

/// How to reach one registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Talk plain HTTP to it.
    #[serde(default)]
    pub plain_http: bool,
    /// Hosts to try before it (parsed and shown; not used for fetching yet).
    #[serde(default)]
    pub mirrors: Vec<String>,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file that was read, if any.
    pub file: Option<PathBuf>,
    pub clip_version: Setting<ClipVersion>,
    pub cache_dir: Setting<PathBuf>,
    pub cache_size: Setting<u64>,
    pub state_dir: Setting<PathBuf>,
    /// The OCI runtime binary.
    pub runtime: Setting<String>,
    /// Per registry host (`host[:port]`).
    pub registries: Setting<BTreeMap<String, RegistryConfig>>,
    /// Where indexes are looked up after the registry (and published, with `publish_index`).
    pub s3_index_store: Setting<Option<S3Url>>,
    /// Publish indexes built on this node to the registry and the S3 index store.
    pub publish_index: Setting<bool>,
    /// The shared tier of decompressed spans (`s3://BUCKET/PREFIX`), passed to the mounts `run`/`pull` start.
    pub s3_content_cache: Setting<Option<S3Url>>,
    /// The startup set and startup profiles (`[startup]`).
    pub startup: StartupConfig,
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    clip_version: Option<u8>,
    cache_dir: Option<PathBuf>,
    cache_size: Option<SizeValue>,
    state_dir: Option<PathBuf>,
    runtime: Option<String>,
    publish_index: Option<bool>,
    #[serde(default)]
    registries: BTreeMap<String, RegistryConfig>,
    #[serde(default)]
    s3: FileS3,
    #[serde(default)]
    startup: startup::FileStartup,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileS3 {
    index_store: Option<String>,
    content_cache: Option<String>,
}

/// `cache_size = 1073741824` or `cache_size = "1G"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl Default for Config {
    fn default() -> Config {
        Config {
            file: None,
            clip_version: Setting::default(ClipVersion::V2),
            cache_dir: Setting::default(clip_store::default_cache_dir()),
            cache_size: Setting::default(DEFAULT_CACHE_SIZE),
            state_dir: Setting::default(PathBuf::from(DEFAULT_STATE_DIR)),
            runtime: Setting::default("runc".to_owned()),
            registries: Setting::default(BTreeMap::new()),
            s3_index_store: Setting::default(None),
            publish_index: Setting::default(false),
            s3_content_cache: Setting::default(None),
            startup: StartupConfig::default(),
        }
    }
}

/// The local layer part store of commands that take no node configuration (`clip index`, `clip inspect`):
/// [`PARTS_DIR`] under `CLIP_STATE_DIR` when set, else under [`DEFAULT_STATE_DIR`] as root — where `clip
/// pull` keeps its parts with the default configuration — and `$XDG_STATE_HOME/clip/parts` (or
/// `~/.local/state/clip/parts`) for other users, who cannot write there.
pub fn default_parts_dir() -> PathBuf {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    if let Some(state) = std::env::var_os("CLIP_STATE_DIR").and_then(absolute) {
        return state.join(PARTS_DIR);
    }
    if !nix::unistd::geteuid().is_root() {
        let xdg = std::env::var_os("XDG_STATE_HOME").and_then(absolute);
        let home = || std::env::var_os("HOME").and_then(absolute).map(|h| h.join(".local").join("state"));
        if let Some(state) = xdg.or_else(home) {
            return state.join("clip").join(PARTS_DIR);
        }
    }
    PathBuf::from(DEFAULT_STATE_DIR).join(PARTS_DIR)
}

impl Config {
    /// The node's local layer part store, `STATE_DIR/parts`.
    pub fn parts_dir(&self) -> PathBuf {
        self.state_dir.value.join(PARTS_DIR)
    }

    /// Loads the configuration: `file` (must exist) or else [`DEFAULT_CONFIG_FILE`] when it exists, then the
    /// process environment on top.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("CLIP_")).collect();
        let (path, required) = match file {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
        };
        let read = |path: &Path| {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut clip_format::open_regular(path)?, &mut text).map(|_| text)
        };
        let text = match read(&path) {
            Ok(t) => Some(t),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Config::from_parts(text.as_deref().map(|t| (path.as_path(), t)), &env)
    }

    /// Builds the configuration from a file's text (with its path) and `CLIP_*` variables.
    pub fn from_parts(file: Option<(&Path, &str)>, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        if let Some((path, text)) = file {
            config.apply_file(path, text)?;
        }
        config.apply_env(env)?;
        Ok(config)
    }

    /// Whether the registry `host` (`host[:port]`) is configured for plain HTTP.
    pub fn plain_http(&self, host: &str) -> bool {
        self.registries.value.get(host).is_some_and(|r| r.plain_http)
    }

    /// The effective settings as `(key, value, origin)` rows, for display. Mirror URLs lose any user
    /// information (`user:password@`).
    pub fn entries(&self) -> Vec<(String, String, Origin)> {
        let mut rows = vec![
            ("clip_version".to_owned(), self.clip_version.value.to_string(), self.clip_version.origin.clone()),
            ("cache_dir".to_owned(), self.cache_dir.value.display().to_string(), self.cache_dir.origin.clone()),
            ("cache_size".to_owned(), self.cache_size.value.to_string(), self.cache_size.origin.clone()),
            ("state_dir".to_owned(), self.state_dir.value.display().to_string(), self.state_dir.origin.clone()),
            ("runtime".to_owned(), self.runtime.value.clone(), self.runtime.origin.clone()),
        ];
        for (host, r) in &self.registries.value {
            let origin = self.registries.origin.clone();
            rows.push((format!("registries.\"{host}\".plain_http"), r.plain_http.to_string(), origin.clone()));
            let mirrors: Vec<String> = r.mirrors.iter().map(|m| redact_userinfo(m)).collect();
            rows.push((format!("registries.\"{host}\".mirrors"), format!("{mirrors:?}"), origin));
        }
        let url = |u: &Option<S3Url>| u.as_ref().map(|u| u.to_string()).unwrap_or_else(|| "(none)".into());
        rows.push(("publish_index".into(), self.publish_index.value.to_string(), self.publish_index.origin.clone()));
        rows.push(("s3.index_store".into(), url(&self.s3_index_store.value), self.s3_index_store.origin.clone()));
        rows.push(("s3.content_cache".into(), url(&self.s3_content_cache.value), self.s3_content_cache.origin.clone()));
        rows.extend(self.startup.entries());
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const FILE: &str = r#"
clip_version = 1
cache_size = "2G"
state_dir = "/srv/clip"

[registries."127.0.0.1:5000"]
plain_http = true
mirrors = ["https://u:secret@mirror.local/x"]

[s3]
index_store = "s3://bkt/indexes"
"#;

    #[test]
    fn defaults_file_and_env_layer_with_origins() {
        let path = Path::new("/etc/clip/config.toml");
        let c = Config::from_parts(Some((path, FILE)), &env(&[("CLIP_STATE_DIR", "/tmp/st")])).unwrap();
        assert_eq!(c.clip_version.value, ClipVersion::V1);
        assert_eq!(c.clip_version.origin, Origin::File(path.into()));
        assert_eq!(c.cache_size.value, 2 << 30);
        assert_eq!(c.state_dir.value, PathBuf::from("/tmp/st"));
        assert_eq!(c.state_dir.origin, Origin::Env("CLIP_STATE_DIR"));
        assert_eq!(c.runtime.origin, Origin::Default);
        assert!(c.plain_http("127.0.0.1:5000") && !c.plain_http("other:5000"));
        assert_eq!(c.s3_index_store.value.as_ref().unwrap().to_string(), "s3://bkt/indexes");
        let shown = format!("{:?}", c.entries());
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("***@mirror.local/x"), "{shown}");
    }

    #[test]
    fn env_overrides_every_kind_of_key() {
        let e = env(&[
            ("CLIP_VERSION", "1"),
            ("CLIP_CACHE_SIZE", "64M"),
            ("CLIP_PLAIN_HTTP_REGISTRIES", "a:1, b:2"),
            ("CLIP_REGISTRY_MIRRORS", "a:1=m1,m2"),
            ("CLIP_S3_CONTENT_CACHE", "s3://cache/spans"),
            ("CLIP_PUBLISH_INDEX", "true"),
        ]);
        let c = Config::from_parts(None, &e).unwrap();
        assert_eq!(c.clip_version.value, ClipVersion::V1);
        assert_eq!(c.cache_size.value, 64 << 20);
        assert!(c.plain_http("a:1") && c.plain_http("b:2"));
        assert_eq!(c.registries.value["a:1"].mirrors, ["m1", "m2"]);
        assert_eq!(c.s3_content_cache.origin, Origin::Env("CLIP_S3_CONTENT_CACHE"));
        assert!(c.publish_index.value && !Config::default().publish_index.value);
        assert!(Config::from_parts(None, &env(&[("CLIP_PUBLISH_INDEX", "maybe")])).is_err());
    }

    #[test]
    fn bad_values_are_refused_without_echoing_the_line() {
        let path = Path::new("c.toml");
        let e = Config::from_parts(Some((path, "clip_version = 3\n")), &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("must be 1"), "{e}");
        let e = Config::from_parts(Some((path, "\npassword = \"hunter2\"\n")), &BTreeMap::new()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("line 2") && !msg.contains("hunter2"), "{msg}");
        assert!(Config::from_parts(None, &env(&[("CLIP_VERSION", "v2")])).is_err());
        assert!(Config::from_parts(None, &env(&[("CLIP_S3_INDEX_STORE", "/local")])).is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("10g"), Ok(10 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert!(parse_size("ten").is_err());
    }
}

//! Where an S3 object is and how to reach it: the `s3://BUCKET/KEY` location ([`S3Url`]) and the endpoint,
//! region, addressing style and credentials ([`S3Config`]) resolved the way the AWS CLI does: environment
//! variables first, then the profile (`AWS_PROFILE`, default `default`) of `~/.aws/credentials` and
//! `~/.aws/config` (or `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE`).
//!
//! | setting | environment | config file (profile section) |
//! | --- | --- | --- |
//! | endpoint | `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL` | `endpoint_url` (also under `s3 =`) |
//! | region | `AWS_REGION`, `AWS_DEFAULT_REGION` | `region` (default `us-east-1`) |
//! | credentials | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` | `aws_access_key_id`, ... |
//! | path-style | `AWS_S3_FORCE_PATH_STYLE=true` | `addressing_style = path` under `s3 =` |
//! | plain http | `AWS_ALLOW_HTTP=true` (implied for `http://` loopback endpoints) | |
//!
//! Secrets are never part of a `Debug` or `Display` output or of an error message.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::S3Error;

/// An object's location, `s3://BUCKET/KEY`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct S3Url {
    pub bucket: String,
    pub key: String,
}

impl S3Url {
    /// Whether `s` names an S3 object (starts with `s3://`).
    pub fn is_s3(s: &str) -> bool {
        s.starts_with("s3://")
    }
}

impl FromStr for S3Url {
    type Err = S3Error;

    fn from_str(s: &str) -> Result<S3Url, S3Error> {
        let bad = |reason: &str| S3Error::InvalidUrl { input: s.to_owned(), reason: reason.to_owned() };
        let rest = s.strip_prefix("s3://").ok_or_else(|| bad("does not start with s3://"))?;
        let (bucket, key) = rest.split_once('/').ok_or_else(|| bad("no key after the bucket"))?;
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !bucket_ok {
            return Err(bad("bucket names are 3-63 characters of a-z, 0-9, '.' and '-'"));
        }
        if key.is_empty() || key.ends_with('/') || key.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(bad("the key must name an object: no empty, '.' or '..' components, no trailing '/'"));
        }
        Ok(S3Url { bucket: bucket.to_owned(), key: key.to_owned() })
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// Options the command line can set on top of the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// Force path-style addressing (`ENDPOINT/BUCKET/KEY`), as `--s3-path-style` does.
    pub path_style: bool,
}

/// Access key, secret and optional session token.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// Where they came from, for messages: `environment`, `~/.aws/credentials [default]`, ...
    pub origin: String,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key id is not secret (it is in every request) but is still left out of logs.
        f.debug_struct("S3Credentials").field("origin", &self.origin).finish_non_exhaustive()
    }
}

/// Everything needed to talk to one S3 endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `scheme://host[:port]` of an S3-compatible server; `None` for AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    /// `ENDPOINT/BUCKET/KEY` instead of `BUCKET.ENDPOINT/KEY`.
    pub path_style: bool,
    /// Plain `http://` endpoints are allowed.
    pub allow_http: bool,
    /// `None`: unsigned (anonymous) requests, for public buckets.
    pub credentials: Option<S3Credentials>,
}

impl S3Config {
    /// Resolves the configuration from the process environment and the AWS files in `$HOME/.aws`.
    pub fn from_env(opts: &S3Options) -> Result<S3Config, S3Error> {
        let env: HashMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("AWS_")).collect();
        let home = std::env::var_os("HOME").map(PathBuf::from);
        Self::resolve(&env, home.as_deref(), opts)
    }

    /// Resolves the configuration from `env` (variables named `AWS_*`) and the AWS files under `home`.
    pub fn resolve(env: &HashMap<String, String>, home: Option<&Path>, opts: &S3Options) -> Result<S3Config, S3Error> {
        let var = |k: &str| env.get(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".to_owned());
        let aws_file = |var_name: &str, name: &str| {
            var(var_name).map(PathBuf::from).or_else(|| home.map(|h| h.join(".aws").join(name)))
        };
        let credentials_file = match aws_file("AWS_SHARED_CREDENTIALS_FILE", "credentials") {
            Some(path) => IniFile::read(&path)?,
            None => IniFile::default(),
        };
        let config_file = match aws_file("AWS_CONFIG_FILE", "config") {
            Some(path) => IniFile::read(&path)?,
            None => IniFile::default(),
        };
        // `[NAME]` in the credentials file, `[profile NAME]` (or `[default]`) in the config file.
        let creds_section = credentials_file.section(&profile);
        let config_section = config_file
            .section(&format!("profile {profile}"))
            .or_else(|| (profile == "default").then(|| config_file.section("default")).flatten());
        let from_config = |key: &str| config_section.and_then(|s| s.get(key)).cloned();

        let endpoint = var("AWS_ENDPOINT_URL_S3")
            .or_else(|| var("AWS_ENDPOINT_URL"))
            .or_else(|| from_config("s3.endpoint_url"))
            .or_else(|| from_config("endpoint_url"))
            .map(|e| e.trim_end_matches('/').to_owned());
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .or_else(|| from_config("region"))
            .unwrap_or_else(|| "us-east-1".to_owned());
        let truthy =
            |v: Option<String>| v.is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
        let mut path_style = opts.path_style
            || truthy(var("AWS_S3_FORCE_PATH_STYLE"))
            || from_config("s3.addressing_style").is_some_and(|s| s.eq_ignore_ascii_case("path"));
        let mut allow_http = truthy(var("AWS_ALLOW_HTTP"));
        if let Some(e) = &endpoint {
            let (scheme, host) = split_endpoint(e).ok_or_else(|| S3Error::Config {
                reason: format!("endpoint {e:?} is not an http:// or https:// URL"),
            })?;
            let loopback = is_loopback(host);
            if scheme == "http" && !allow_http {
                if !loopback {
                    return Err(S3Error::Config {
                        reason: format!("endpoint {e} is plain http; set AWS_ALLOW_HTTP=true to allow it"),
                    });
                }
                allow_http = true;
            }
            // `BUCKET.127.0.0.1` cannot resolve: IP addresses and localhost always use path style.
            path_style |= loopback || host_is_ip(host);
        }

        let credentials = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => Some(S3Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: var("AWS_SESSION_TOKEN"),
                origin: "environment (AWS_ACCESS_KEY_ID)".into(),
            }),
            (Some(_), None) | (None, Some(_)) => {
                return Err(S3Error::Config {
                    reason: "only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set; set both".into(),
                })
            }
            (None, None) => {
                [(creds_section, &credentials_file, profile.clone()), (config_section, &config_file, profile)]
                    .into_iter()
                    .find_map(|(section, file, name)| {
                        let s = section?;
                        Some(S3Credentials {
                            access_key_id: s.get("aws_access_key_id")?.clone(),
                            secret_access_key: s.get("aws_secret_access_key")?.clone(),
                            session_token: s.get("aws_session_token").cloned(),
                            origin: format!("{} [{name}]", file.path.display()),
                        })
                    })
            }
        };
        Ok(S3Config { endpoint, region, path_style, allow_http, credentials })
    }

    /// Where the credentials come from, for messages (`none: anonymous requests` when there are none).
    pub fn credentials_origin(&self) -> String {
        match &self.credentials {
            Some(c) => c.origin.clone(),
            None => "none found: requests are anonymous".into(),
        }
    }

    /// `scheme://host[:port]` the requests go to, for messages.
    pub fn endpoint_display(&self) -> String {
        self.endpoint.clone().unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", self.region))
    }
}

fn split_endpoint(e: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = e.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    (!host.is_empty()).then_some((scheme, host))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn host_is_ip(host: &str) -> bool {
    host.parse::<std::net::IpAddr>().is_ok()
}

/// Inserts the bucket into an endpoint's host for virtual-hosted addressing.
pub(crate) fn virtual_hosted_endpoint(endpoint: &str, bucket: &str) -> String {
    match endpoint.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{bucket}.{rest}"),
        None => format!("{bucket}.{endpoint}"),
    }
}

/// An AWS-style INI file: `[section]` headers, `key = value` lines, and nested `key =` blocks whose
/// indented lines are stored as `key.subkey`.
#[derive(Debug, Default)]
struct IniFile {
    path: PathBuf,
    sections: HashMap<String, HashMap<String, String>>,
}

impl IniFile {
    /// Reads `path`; a missing file is an empty one.
    fn read(path: &Path) -> Result<IniFile, S3Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(IniFile { path: path.to_path_buf(), sections: parse_ini(&text) }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(IniFile::default()),
            Err(e) => Err(S3Error::io(path)(e)),
        }
    }

    fn section(&self, name: &str) -> Option<&HashMap<String, String>> {
        self.sections.get(name)
    }
}

fn parse_ini(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut sections: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut current: Option<String> = None;
    let mut parent: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            sections.entry(name.clone()).or_default();
            current = Some(name);
            parent = None;
            continue;
        }
        let (Some(section), Some((key, value))) = (&current, trimmed.split_once('=')) else { continue };
        let (key, value) = (key.trim().to_owned(), value.trim().to_owned());
        let indented = line.starts_with([' ', '\t']);
        let entry = sections.entry(section.clone()).or_default();
        match (&parent, indented) {
            (Some(p), true) => {
                entry.insert(format!("{p}.{key}"), value);
            }
            _ if value.is_empty() => parent = Some(key),
            _ => {
                parent = None;
                entry.insert(key, value);
            }
        }
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn urls_parse_and_print() {
        let u: S3Url = "s3://my-bucket/dir/app.clip".parse().unwrap();
        assert_eq!((u.bucket.as_str(), u.key.as_str()), ("my-bucket", "dir/app.clip"));
        assert_eq!(u.to_string(), "s3://my-bucket/dir/app.clip");
        for bad in ["s3://bucket", "s3://bucket/", "s3://b/key", "s3://Bucket/key", "s3://bucket/a//b", "/tmp/x"] {
            let e = bad.parse::<S3Url>().unwrap_err().to_string();
            assert!(e.contains("s3://BUCKET/KEY"), "{bad}: {e}");
        }
    }

    #[test]
    fn environment_wins_and_loopback_http_is_path_style() {
        let c = S3Config::resolve(
            &env(&[
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000/"),
                ("AWS_REGION", "eu-west-1"),
                ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
                ("AWS_SECRET_ACCESS_KEY", "very-secret"),
            ]),
            None,
            &S3Options::default(),
        )
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(c.region, "eu-west-1");
        assert!(c.path_style && c.allow_http);
        let creds = c.credentials.as_ref().unwrap();
        assert_eq!((creds.access_key_id.as_str(), creds.session_token.as_deref()), ("AKIDEXAMPLE", None));
        let debug = format!("{c:?}");
        assert!(!debug.contains("very-secret") && !debug.contains("AKIDEXAMPLE"), "{debug}");
    }

    #[test]
    fn remote_http_needs_allow_http_and_half_credentials_are_refused() {
        let e = S3Config::resolve(&env(&[("AWS_ENDPOINT_URL", "http://s3.example.com")]), None, &S3Options::default())
            .unwrap_err();
        assert!(e.to_string().contains("AWS_ALLOW_HTTP=true"), "{e}");
        let ok = S3Config::resolve(
            &env(&[("AWS_ENDPOINT_URL", "http://s3.example.com"), ("AWS_ALLOW_HTTP", "true")]),
            None,
            &S3Options::default(),
        )
        .unwrap();
        assert!(ok.allow_http && !ok.path_style && ok.credentials.is_none());
        assert!(S3Config::resolve(&env(&[("AWS_ACCESS_KEY_ID", "x")]), None, &S3Options::default()).is_err());
    }

    #[test]
    fn profiles_come_from_the_aws_files() {
        let home = tempfile::tempdir().unwrap();
        let aws = home.path().join(".aws");
        std::fs::create_dir(&aws).unwrap();
        std::fs::write(
            aws.join("credentials"),
            "[default]\naws_access_key_id = DEF\naws_secret_access_key = defsecret\n\n[ci]\n# comment\naws_access_key_id=CI\naws_secret_access_key = cisecret\naws_session_token = tok\n",
        )
        .unwrap();
        std::fs::write(
            aws.join("config"),
            "[default]\nregion = us-west-2\n[profile ci]\nregion = ap-south-1\ns3 =\n  addressing_style = path\n  endpoint_url = https://minio.example.com\n",
        )
        .unwrap();
        let c = S3Config::resolve(&env(&[]), Some(home.path()), &S3Options::default()).unwrap();
        assert_eq!(c.region, "us-west-2");
        assert_eq!(c.credentials.as_ref().unwrap().access_key_id, "DEF");
        assert!(!c.path_style && c.endpoint.is_none());

        let c = S3Config::resolve(&env(&[("AWS_PROFILE", "ci")]), Some(home.path()), &S3Options::default()).unwrap();
        assert_eq!(c.region, "ap-south-1");
        assert_eq!(c.endpoint.as_deref(), Some("https://minio.example.com"));
        assert!(c.path_style);
        let creds = c.credentials.unwrap();
        assert_eq!((creds.access_key_id.as_str(), creds.session_token.as_deref()), ("CI", Some("tok")));
        assert!(creds.origin.contains("credentials [ci]"), "{}", creds.origin);

        // The flag forces path style; the environment overrides the files.
        let c =
            S3Config::resolve(&env(&[("AWS_REGION", "sa-east-1")]), Some(home.path()), &S3Options { path_style: true })
                .unwrap();
        assert!(c.path_style);
        assert_eq!(c.region, "sa-east-1");
    }

    #[test]
    fn virtual_hosted_endpoints_carry_the_bucket() {
        assert_eq!(virtual_hosted_endpoint("https://minio.example.com", "b1"), "https://b1.minio.example.com");
    }
}

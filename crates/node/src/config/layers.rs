//! The layers of the configuration over its defaults: the TOML file ([`Config::apply_file`]), then the
//! `CLIP_*` environment ([`Config::apply_env`]); each value keeps its [`Origin`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::values::{parse_bool, parse_s3, parse_size, parse_version};
use super::{Config, ConfigError, FileConfig, Origin, Setting, SizeValue};

impl Config {
    pub(super) fn apply_file(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let parsed: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            line: e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1).unwrap_or(0),
            message: e.message().to_owned(),
        })?;
        self.file = Some(path.to_path_buf());
        let origin = || Origin::File(path.to_path_buf());
        if let Some(v) = parsed.clip_version {
            self.clip_version = Setting::from_file(path, parse_version(&v.to_string(), origin())?);
        }
        if let Some(v) = parsed.cache_dir {
            self.cache_dir = Setting::from_file(path, v);
        }
        if let Some(v) = parsed.cache_size {
            let bytes = match v {
                SizeValue::Bytes(b) => b,
                SizeValue::Text(t) => parse_size(&t).map_err(|message| ConfigError::Value {
                    key: "cache_size",
                    value: t.clone(),
                    origin: origin(),
                    message,
                })?,
            };
            self.cache_size = Setting::from_file(path, bytes);
        }
        if let Some(v) = parsed.state_dir {
            self.state_dir = Setting::from_file(path, v);
        }
        if let Some(v) = parsed.runtime {
            self.runtime = Setting::from_file(path, v);
        }
        if let Some(v) = parsed.publish_index {
            self.publish_index = Setting::from_file(path, v);
        }
        self.startup.apply_file(path, parsed.startup);
        if !parsed.registries.is_empty() {
            self.registries = Setting::from_file(path, parsed.registries);
        }
        if let Some(v) = parsed.s3.index_store {
            self.s3_index_store = Setting::from_file(path, Some(parse_s3("s3.index_store", &v, origin())?));
        }
        if let Some(v) = parsed.s3.content_cache {
            self.s3_content_cache = Setting::from_file(path, Some(parse_s3("s3.content_cache", &v, origin())?));
        }
        Ok(())
    }

    pub(super) fn apply_env(&mut self, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        let get = |var: &'static str| env.get(var).filter(|v| !v.is_empty()).map(|v| (var, v));
        if let Some((var, v)) = get("CLIP_VERSION") {
            self.clip_version = Setting { value: parse_version(v, Origin::Env(var))?, origin: Origin::Env(var) };
        }
        if let Some((var, v)) = get("CLIP_CACHE_DIR") {
            self.cache_dir = Setting { value: PathBuf::from(v), origin: Origin::Env(var) };
        }
        if let Some((var, v)) = get("CLIP_CACHE_SIZE") {
            let value = parse_size(v).map_err(|message| ConfigError::Value {
                key: "cache_size",
                value: v.clone(),
                origin: Origin::Env(var),
                message,
            })?;
            self.cache_size = Setting { value, origin: Origin::Env(var) };
        }
        if let Some((var, v)) = get("CLIP_STATE_DIR") {
            self.state_dir = Setting { value: PathBuf::from(v), origin: Origin::Env(var) };
        }
        if let Some((var, v)) = get("CLIP_RUNTIME") {
            self.runtime = Setting { value: v.clone(), origin: Origin::Env(var) };
        }
        if let Some((var, v)) = get("CLIP_PUBLISH_INDEX") {
            self.publish_index =
                Setting { value: parse_bool("publish_index", v, Origin::Env(var))?, origin: Origin::Env(var) };
        }
        self.startup.apply_env(&get)?;
        if let Some((var, v)) = get("CLIP_S3_INDEX_STORE") {
            let url = parse_s3("s3.index_store", v, Origin::Env(var))?;
            self.s3_index_store = Setting { value: Some(url), origin: Origin::Env(var) };
        }
        if let Some((var, v)) = get("CLIP_S3_CONTENT_CACHE") {
            let url = parse_s3("s3.content_cache", v, Origin::Env(var))?;
            self.s3_content_cache = Setting { value: Some(url), origin: Origin::Env(var) };
        }
        let plain = get("CLIP_PLAIN_HTTP_REGISTRIES");
        let mirrors = get("CLIP_REGISTRY_MIRRORS");
        if let Some((var, v)) = plain {
            for host in v.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                self.registries.value.entry(host.to_owned()).or_default().plain_http = true;
            }
            self.registries.origin = Origin::Env(var);
        }
        if let Some((var, v)) = mirrors {
            for item in v.split(';').map(str::trim).filter(|h| !h.is_empty()) {
                let Some((host, list)) = item.split_once('=') else {
                    return Err(ConfigError::Value {
                        key: "registries.*.mirrors",
                        value: item.to_owned(),
                        origin: Origin::Env(var),
                        message: "expected HOST=MIRROR[,MIRROR...]".into(),
                    });
                };
                let mirrors = list.split(',').map(str::trim).filter(|m| !m.is_empty()).map(str::to_owned).collect();
                self.registries.value.entry(host.trim().to_owned()).or_default().mirrors = mirrors;
            }
            self.registries.origin = Origin::Env(var);
        }
        Ok(())
    }
}

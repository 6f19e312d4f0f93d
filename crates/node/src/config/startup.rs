//! The `[startup]` table of the node configuration ([`StartupConfig`]): whether mounts prefetch the index's
//! startup set, and whether the first cold run of an image on this node records its startup profile
//! (within limits) and publishes it next to the image for every other node.

use std::path::Path;

use serde::Deserialize;

use super::values::parse_bool;
use super::{ConfigError, Origin, Setting};
use crate::RecordLimits;

/// The `[startup]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileStartup {
    set: Option<bool>,
    record_profiles: Option<bool>,
    publish_profiles: Option<bool>,
    record_seconds: Option<u64>,
    record_spans: Option<usize>,
}

/// Startup settings of `clip pull`/`run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupConfig {
    /// Mounts prefetch the index's startup set as they start (`set`, `CLIP_STARTUP_SET`).
    pub set: Setting<bool>,
    /// A mount started for an image that has no profile yet records one (`record_profiles`,
    /// `CLIP_RECORD_PROFILES`).
    pub record_profiles: Setting<bool>,
    /// A profile recorded here is published next to its image (`publish_profiles`, `CLIP_PUBLISH_PROFILES`).
    pub publish_profiles: Setting<bool>,
    /// When a recording ends (`record_seconds`, `record_spans`).
    pub record_limits: Setting<RecordLimits>,
}

impl Default for StartupConfig {
    fn default() -> StartupConfig {
        StartupConfig {
            set: Setting::default(true),
            record_profiles: Setting::default(true),
            publish_profiles: Setting::default(true),
            record_limits: Setting::default(RecordLimits::default()),
        }
    }
}

impl StartupConfig {
    pub(super) fn apply_file(&mut self, path: &Path, file: FileStartup) {
        let set = |s: &mut Setting<bool>, v: Option<bool>| {
            if let Some(v) = v {
                *s = Setting::from_file(path, v);
            }
        };
        set(&mut self.set, file.set);
        set(&mut self.record_profiles, file.record_profiles);
        set(&mut self.publish_profiles, file.publish_profiles);
        if file.record_seconds.is_some() || file.record_spans.is_some() {
            let RecordLimits { seconds, spans } = self.record_limits.value;
            let limits = RecordLimits {
                seconds: file.record_seconds.unwrap_or(seconds),
                spans: file.record_spans.unwrap_or(spans),
            };
            self.record_limits = Setting::from_file(path, limits);
        }
    }

    /// `get(VAR)`: the variable's name and value when it is set and not empty.
    pub(super) fn apply_env<'a>(
        &mut self,
        get: &dyn Fn(&'static str) -> Option<(&'static str, &'a String)>,
    ) -> Result<(), ConfigError> {
        for (var, key, setting) in [
            ("CLIP_STARTUP_SET", "startup.set", &mut self.set),
            ("CLIP_RECORD_PROFILES", "startup.record_profiles", &mut self.record_profiles),
            ("CLIP_PUBLISH_PROFILES", "startup.publish_profiles", &mut self.publish_profiles),
        ] {
            if let Some((var, v)) = get(var) {
                *setting = Setting { value: parse_bool(key, v, Origin::Env(var))?, origin: Origin::Env(var) };
            }
        }
        Ok(())
    }

    pub(super) fn entries(&self) -> Vec<(String, String, Origin)> {
        let limits = self.record_limits.value;
        vec![
            ("startup.set".into(), self.set.value.to_string(), self.set.origin.clone()),
            (
                "startup.record_profiles".into(),
                self.record_profiles.value.to_string(),
                self.record_profiles.origin.clone(),
            ),
            (
                "startup.publish_profiles".into(),
                self.publish_profiles.value.to_string(),
                self.publish_profiles.origin.clone(),
            ),
            ("startup.record_seconds".into(), limits.seconds.to_string(), self.record_limits.origin.clone()),
            ("startup.record_spans".into(), limits.spans.to_string(), self.record_limits.origin.clone()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::config::{Config, Origin};

    #[test]
    fn the_startup_table_and_its_variables() {
        let path = Path::new("c.toml");
        let text = "[startup]\npublish_profiles = false\nrecord_seconds = 3\n";
        let env: BTreeMap<String, String> = [("CLIP_STARTUP_SET".to_owned(), "0".to_owned())].into();
        let c = Config::from_parts(Some((path, text)), &env).unwrap();
        assert!(!c.startup.publish_profiles.value && c.startup.record_profiles.value && !c.startup.set.value);
        assert_eq!(c.startup.record_limits.value, crate::RecordLimits { seconds: 3, spans: 2048 });
        assert_eq!(c.startup.set.origin, Origin::Env("CLIP_STARTUP_SET"));
        assert!(Config::from_parts(Some((path, "[startup]\nrecord = true\n")), &BTreeMap::new()).is_err());
        let bad: BTreeMap<String, String> = [("CLIP_PUBLISH_PROFILES".to_owned(), "maybe".to_owned())].into();
        assert!(Config::from_parts(None, &bad).is_err());
    }

    use std::path::Path;
}

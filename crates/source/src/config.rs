//! [`ImageConfig`]: the parts of an image's config blob that clip carries into its index and
//! uses to run containers.

use oci_spec::image::ImageConfiguration;

use crate::digest::Digest;
use crate::platform::Platform;

/// The runtime configuration of an image and its layer diff IDs, from the config blob (OCI
/// `application/vnd.oci.image.config.v1+json` or Docker `…container.image.v1+json`).
///
/// Absent or `null` lists are empty, absent or empty strings are `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// What a runtime needs (env, entrypoint, cmd, user, …): the form an index keeps in its `META`.
    pub runtime: clip_format::ImageConfig,
    /// Digests of the uncompressed layer tars, in layer order.
    pub diff_ids: Vec<Digest>,
}

/// Parses a config blob into an [`ImageConfig`] and the platform it declares.
pub(crate) fn parse_config(bytes: &[u8]) -> Result<(ImageConfig, Platform), String> {
    let parsed: ImageConfiguration = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let diff_ids = parsed
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| d.parse::<Digest>().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let platform = Platform {
        os: parsed.os().to_string(),
        architecture: parsed.architecture().to_string(),
        variant: parsed.variant().clone().filter(|v| !v.is_empty()),
    };
    let mut config = ImageConfig { diff_ids, ..ImageConfig::default() };
    if let Some(c) = parsed.config() {
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        let sorted = |v: &Option<Vec<String>>| {
            let mut v = v.clone().unwrap_or_default();
            v.sort();
            v
        };
        config.runtime = clip_format::ImageConfig {
            env: c.env().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            working_dir: non_empty(c.working_dir()),
            user: non_empty(c.user()),
            labels: c.labels().clone().unwrap_or_default().into_iter().collect(),
            exposed_ports: sorted(c.exposed_ports()),
            volumes: sorted(c.volumes()),
            stop_signal: non_empty(c.stop_signal()),
        };
    }
    Ok((config, platform))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIFF: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_docker_style_config() {
        let json = format!(
            r#"{{"architecture":"arm64","variant":"v8","os":"linux","created":"2024-01-01T00:00:00Z",
            "config":{{"Env":["PATH=/usr/bin","A=b"],"Cmd":["bash"],"Entrypoint":null,"WorkingDir":"",
            "User":"1000:1000","Labels":{{"z":"1","a":"2"}},"ExposedPorts":{{"8080/tcp":{{}},"443/tcp":{{}}}},
            "Volumes":{{"/data":{{}},"/cache":{{}}}},"StopSignal":"SIGINT","OnBuild":null}},
            "container_config":{{"Hostname":"x"}},
            "rootfs":{{"type":"layers","diff_ids":["{DIFF}"]}},
            "history":[{{"created_by":"x","empty_layer":true}}]}}"#
        );
        let (config, platform) = parse_config(json.as_bytes()).unwrap();
        assert_eq!(platform, Platform::new("linux", "arm64", Some("v8")));
        assert_eq!(config.runtime.env, ["PATH=/usr/bin", "A=b"]);
        assert_eq!(config.runtime.cmd, ["bash"]);
        assert!(config.runtime.entrypoint.is_empty());
        assert_eq!(config.runtime.working_dir, None);
        assert_eq!(config.runtime.user.as_deref(), Some("1000:1000"));
        assert_eq!(config.runtime.labels.keys().collect::<Vec<_>>(), ["a", "z"]);
        assert_eq!(config.runtime.exposed_ports, ["443/tcp", "8080/tcp"]);
        assert_eq!(config.runtime.volumes, ["/cache", "/data"]);
        assert_eq!(config.runtime.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(config.diff_ids, [DIFF.parse::<Digest>().unwrap()]);
    }

    #[test]
    fn minimal_config_and_errors() {
        let (config, platform) =
            parse_config(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#).unwrap();
        assert_eq!(config, ImageConfig::default());
        assert_eq!(platform, Platform::new("linux", "amd64", None));
        assert!(parse_config(b"not json").is_err());
        assert!(parse_config(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:zz"]}}"#
        )
        .is_err());
    }
}

//! The OCI runtime spec (`config.json`) of a container, generated from the image config: Env, Entrypoint +
//! Cmd (or the command given), WorkingDir, User (names resolved through the image's `/etc/passwd` and
//! `/etc/group`), the usual `/proc`, `/dev`, `/dev/pts`, `/dev/shm`, `/dev/mqueue` and read-only `/sys`
//! mounts, Docker's default capabilities, and the host's network namespace (host networking).
//!
//! Setuid programs of the image work as under Docker: `noNewPrivileges` is off and the bounding set holds
//! the default capabilities for every user, so a non-root user running a setuid-root program gets euid 0
//! and (at most) those capabilities; a non-root process starts with none.

use std::path::Path;

use clip_format::ImageConfig;
use serde_json::{json, Value};

use crate::run::NodeError;

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A numeric user and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

/// The process the container runs: Entrypoint + (the given command, else Cmd).
pub fn process_args(config: &ImageConfig, command: &[String], image: &str) -> Result<Vec<String>, NodeError> {
    let tail = if command.is_empty() { &config.cmd } else { command };
    let args: Vec<String> = config.entrypoint.iter().chain(tail.iter()).cloned().collect();
    if args.is_empty() {
        return Err(NodeError::NoCommand { image: image.to_owned() });
    }
    Ok(args)
}

/// Resolves the image's `User` (`user`, `uid`, `user:group`, `uid:gid`, …) against the files of `rootfs`.
/// Empty or absent: root.
pub fn resolve_user(spec: Option<&str>, rootfs: &Path, image: &str) -> Result<User, NodeError> {
    let Some(spec) = spec.filter(|s| !s.is_empty()) else { return Ok(User { uid: 0, gid: 0 }) };
    let err = |message: String| NodeError::User { image: image.to_owned(), user: spec.to_owned(), message };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_image_file(rootfs, "passwd");
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && (f[0] == user || (user.parse::<u32>().is_ok() && f[2] == user)));
    let uid = match (user.parse::<u32>(), &entry) {
        (Ok(uid), _) => uid,
        (Err(_), Some(f)) => f[2].parse().map_err(|_| err(format!("bad uid {:?} in /etc/passwd", f[2])))?,
        (Err(_), None) => return Err(err(format!("no user {user:?} in the image's /etc/passwd"))),
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = read_image_file(rootfs, "group");
                let f = groups
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() >= 3 && f[0] == g)
                    .ok_or_else(|| err(format!("no group {g:?} in the image's /etc/group")))?;
                f[2].parse().map_err(|_| err(format!("bad gid {:?} in /etc/group", f[2])))?
            }
        },
        None => match &entry {
            Some(f) => f[3].parse().map_err(|_| err(format!("bad gid {:?} in /etc/passwd", f[3])))?,
            None => 0,
        },
    };
    Ok(User { uid, gid })
}

/// Reads `/etc/NAME` of the image; empty when missing or when `/etc` or the file is not a plain directory and
/// file (a symlink would resolve against the host's root, not the image's).
fn read_image_file(rootfs: &Path, name: &str) -> String {
    let etc = rootfs.join("etc");
    let path = etc.join(name);
    let plain =
        |p: &Path, dir: bool| std::fs::symlink_metadata(p).is_ok_and(|m| if dir { m.is_dir() } else { m.is_file() });
    if !plain(&etc, true) || !plain(&path, false) {
        return String::new();
    }
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The runtime spec of one container whose root filesystem is `rootfs` (absolute).
pub fn runtime_spec(config: &ImageConfig, args: Vec<String>, user: User, rootfs: &Path, hostname: &str) -> Value {
    let mut env = config.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.to_owned());
    }
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={hostname}"));
    }
    let cwd = config.working_dir.clone().filter(|d| d.starts_with('/')).unwrap_or_else(|| "/".to_owned());
    let bounding = CAPABILITIES.to_vec();
    let caps = if user.uid == 0 { CAPABILITIES.to_vec() } else { Vec::new() };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    // Host networking: the host's name resolution.
    for file in ["/etc/resolv.conf", "/etc/hosts"] {
        if Path::new(file).is_file() {
            mounts.push(json!({"destination": file, "type": "bind", "source": file,
                               "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}));
        }
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": user.uid, "gid": user.gid},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": bounding, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            // The image's setuid programs (su, ping, sudo) must work, as under Docker.
            "noNewPrivileges": false
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            // No network namespace: the container shares the host's network.
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                            "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n")
            .unwrap();
        std::fs::write(d.path().join("etc/group"), "root:x:0:\nstaff:x:50:\napp:x:1001:\n").unwrap();
        d
    }

    #[test]
    fn users_resolve_by_name_and_number() {
        let r = rootfs();
        let u = |s| resolve_user(Some(s), r.path(), "img");
        assert_eq!(u("app").unwrap(), User { uid: 1000, gid: 1001 });
        assert_eq!(u("1000").unwrap(), User { uid: 1000, gid: 1001 });
        assert_eq!(u("app:staff").unwrap(), User { uid: 1000, gid: 50 });
        assert_eq!(u("42:7").unwrap(), User { uid: 42, gid: 7 });
        assert_eq!(u("42").unwrap(), User { uid: 42, gid: 0 });
        assert_eq!(resolve_user(None, r.path(), "img").unwrap(), User { uid: 0, gid: 0 });
        assert!(u("nobody").unwrap_err().to_string().contains("no user"));
        assert!(u("app:wheel").unwrap_err().to_string().contains("no group"));
    }

    #[test]
    fn args_combine_entrypoint_and_command() {
        let mut c = ImageConfig { entrypoint: vec!["/init".into()], cmd: vec!["serve".into()], ..Default::default() };
        assert_eq!(process_args(&c, &[], "i").unwrap(), ["/init", "serve"]);
        assert_eq!(process_args(&c, &["sh".into()], "i").unwrap(), ["/init", "sh"]);
        c.entrypoint.clear();
        c.cmd.clear();
        assert!(process_args(&c, &[], "i").is_err());
    }

    #[test]
    fn spec_carries_the_image_config_and_shares_the_host_network() {
        let c = ImageConfig { env: vec!["A=1".into()], working_dir: Some("/opt/app".into()), ..Default::default() };
        let s = runtime_spec(&c, vec!["true".into()], User { uid: 5, gid: 6 }, Path::new("/r"), "h");
        assert_eq!(s["process"]["cwd"], "/opt/app");
        assert_eq!(s["process"]["user"]["uid"], 5);
        assert_eq!(s["root"]["readonly"], false);
        let env: Vec<&str> = s["process"]["env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(env.contains(&"A=1") && env.iter().any(|e| e.starts_with("PATH=")));
        let ns = s["linux"]["namespaces"].as_array().unwrap();
        assert!(!ns.iter().any(|n| n["type"] == "network"));
        let sys = s["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/sys").unwrap();
        assert!(sys["options"].as_array().unwrap().iter().any(|o| o == "ro"));
    }

    #[test]
    fn a_non_root_user_starts_without_capabilities_but_setuid_programs_may_gain_them() {
        let s = runtime_spec(
            &ImageConfig::default(),
            vec!["id".into()],
            User { uid: 1000, gid: 1000 },
            Path::new("/r"),
            "h",
        );
        let caps = &s["process"]["capabilities"];
        assert_eq!(caps["effective"].as_array().unwrap().len(), 0);
        assert_eq!(caps["permitted"].as_array().unwrap().len(), 0);
        assert_eq!(caps["bounding"].as_array().unwrap().len(), CAPABILITIES.len());
        assert_eq!(s["process"]["noNewPrivileges"], false);
    }
}

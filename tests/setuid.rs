//! End to end, setuid binaries of an image: a bare mount (`clip mount`, the shared mount of `clip pull`) never
//! lets a local user run an image's setuid-root program as root — the mount is `nosuid`, and the node's
//! state and mount directories are 0700 — while a container that `clip run` starts as a non-root user still
//! gets the program's setuid bit, from the overlay laid over the mount. Real FUSE, real runc, and a real
//! unprivileged user: `nobody` (65534), switched to with `setpriv`.
//!
//! The image holds the host's `id` as `/bin/id`, setuid root, with the shared libraries it loads at the
//! paths `ldd` names, so it runs both from the host (through the mount) and inside a container.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use clip_testkit::*;
use common::{clip_node, mode, node_env, pull_and_gc, s, text, Indexed, MountProc};

/// The unprivileged user the tests act as.
const NOBODY: &str = "65534";

/// The host's `id` (setuid root, as `/bin/id`) and its libraries, in one layer; the config's `User` is
/// `user` when given.
fn setuid_image(user: Option<&str>) -> Image {
    let mut layer = LayerBuilder::new();
    for entry in host_programs(&[("/usr/bin/id", "bin/id", 0o4755)]) {
        layer.entry(entry);
    }
    let mut image = Image::new(vec![Layer::new(layer.finish(), Compression::Gzip)]);
    image.config.user = user.map(str::to_owned);
    image
}

/// `image` indexed in a directory every user may enter (a tempdir is 0700).
fn indexed(image: &Image) -> Indexed {
    let img = Indexed::new(image);
    std::fs::set_permissions(img.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    img
}

/// Runs `args` as `nobody`, without supplementary groups or capabilities. `setpriv` keeps root's
/// capabilities until its own exec (it needs them to drop the groups), so it starts a shell, which has none
/// left, and the shell runs `args`: path lookup and exec happen as a plain user.
fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups"])
        .args(["/bin/sh", "-c", "exec \"$0\" \"$@\""])
        .args(args)
        .output()
        .expect("running setpriv")
}

/// The per-mount options (`ro,nosuid,nodev,…`) of the mount at `dir`, per /proc/self/mountinfo.
fn mount_options(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 5 && f[4] == dir.to_str().unwrap())
        .map(|f| f[5].to_owned())
        .unwrap_or_else(|| panic!("{} is not mounted", dir.display()))
}

#[test]
fn a_bare_mount_is_nosuid_unless_asked_so_a_local_user_cannot_become_root_through_it() {
    let img = indexed(&setuid_image(None));
    let mnt = img.dir.path().join("mnt");
    let id = mnt.join("bin/id");

    let m = MountProc::start(&img.index(), &mnt, &["--no-cache"]);
    assert_eq!(mode(&id), 0o4755, "the image's setuid bit is shown as it is");
    let out = as_nobody(&[s(&id), "-u"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{NOBODY}\n"), "a setuid-root binary of the mount ran as root");
    let options = mount_options(&mnt);
    assert!(options.split(',').any(|o| o == "nosuid"), "{options}");
    assert!(options.split(',').any(|o| o == "nodev"), "{options}");
    m.stop();

    // The explicit opt-in does what it says.
    let m = MountProc::start(&img.index(), &mnt, &["--no-cache", "--allow-setuid"]);
    assert!(!mount_options(&mnt).split(',').any(|o| o == "nosuid"), "{}", mount_options(&mnt));
    assert_eq!(text(&as_nobody(&[s(&id), "-u"]).stdout), "0\n");
    m.stop();
}

#[test]
fn a_node_keeps_its_state_private_and_its_shared_mounts_nosuid() {
    let img = indexed(&setuid_image(None));
    let env = node_env(img.dir.path());
    let state = img.dir.path().join("state");
    // A node set up by an older clip: state and mounts directories world-readable.
    std::fs::create_dir_all(state.join("mounts")).unwrap();
    for d in [&state, &state.join("mounts")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    pull_and_gc(&img.reference(), &env, |rootfs| {
        let mount_dir = rootfs.parent().unwrap();
        for d in [&state, &state.join("mounts"), mount_dir] {
            assert_eq!(mode(d), 0o700, "{}", d.display());
        }
        assert!(mount_options(rootfs).split(',').any(|o| o == "nosuid"), "{}", mount_options(rootfs));
        let id = rootfs.join("bin/id");
        assert_eq!(mode(&id), 0o4755);
        let out = as_nobody(&[s(&id), "-u"]);
        assert!(!out.status.success(), "nobody reached the shared mount: {}", text(&out.stdout));
        assert!(text(&out.stderr).contains("Permission denied"), "{}", text(&out.stderr));
    });
}

#[test]
fn a_container_of_a_non_root_user_gets_the_setuid_bit() {
    let img = indexed(&setuid_image(Some("1000")));
    let out = clip_node(&["run", &img.reference(), "--", "/bin/id"], &node_env(img.dir.path()));
    assert!(out.status.success(), "clip run failed:\n{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    // The image's User applies (real uid 1000), and the setuid bit makes the effective uid root.
    assert!(stdout.starts_with("uid=1000 ") && stdout.contains(" euid=0 "), "{stdout}");
}

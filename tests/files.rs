//! End to end, careless paths: an output that names a device, FIFO, socket or directory is refused and
//! left as it is (`clip index -o /dev/full` once turned the device into a file); new outputs get the mode
//! any new file gets (0666 less the umask); an input that is a FIFO or a directory gets "not a regular
//! file" at once (`clip inspect FIFO` once blocked forever).

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use clip_testkit::{Compression, Image, LayerBuilder};
use common::{clip_fails, clip_ok, exits_within, mode, s, Indexed};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

/// A small image in an OCI layout, indexed (`img.clip`), and a small root filesystem (`rootfs/`) beside it.
fn inputs() -> (Indexed, PathBuf) {
    let mut l = LayerBuilder::new();
    l.file("etc/hostname", "clip\n");
    let inputs = Indexed::new(&Image::from_tars(vec![l.finish()], Compression::Gzip));
    let rootfs = inputs.path("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/hostname"), "clip\n").unwrap();
    (inputs, rootfs)
}

/// A path of each kind clip must not write over: FIFO, character device (`/dev/full`'s 1:7), socket,
/// directory; and what each is, to check it is left as it was.
fn not_regular_files(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o644)).unwrap();
    let device = dir.join("full");
    mknod(&device, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(1, 7)).expect("mknod (needs root)");
    let socket = dir.join("socket");
    // The socket file stays when the listener is closed.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let subdir = dir.join("subdir");
    std::fs::create_dir(&subdir).unwrap();
    vec![(fifo, "a FIFO"), (device, "a character device"), (socket, "a socket"), (subdir, "a directory")]
}

fn assert_unchanged(path: &Path, kind: &str) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    let t = meta.file_type();
    let same = match kind {
        "a FIFO" => t.is_fifo(),
        "a character device" => t.is_char_device() && meta.rdev() == makedev(1, 7),
        "a socket" => t.is_socket(),
        _ => t.is_dir() && std::fs::read_dir(path).unwrap().next().is_none(),
    };
    assert!(same, "{} ({kind}) was replaced: now {t:?}", path.display());
}

#[test]
fn an_output_that_is_not_a_regular_file_is_refused_and_left_alone() {
    let (inputs, rootfs) = inputs();
    let good = inputs.path("good.clip");
    for (target, kind) in not_regular_files(inputs.dir.path()) {
        let needle = format!("it is {kind}, not a regular file");
        clip_fails(&["index", &inputs.reference(), "-o", s(&target)], &needle);
        assert_unchanged(&target, kind);
        clip_fails(&["archive", s(&rootfs), "-o", s(&target)], &needle);
        assert_unchanged(&target, kind);
        clip_fails(&["archive", s(&rootfs), "-o", s(&good), "--index-out", s(&target)], &needle);
        assert_unchanged(&target, kind);
        assert!(!good.exists(), "refused before anything was written");
    }
    // No temporary file left behind either.
    let stray: Vec<_> = std::fs::read_dir(inputs.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".clip-") || n.starts_with(".tmp"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

/// Runs `clip ARGS` under `umask`.
fn clip_with_umask(umask: &str, args: &[&str]) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
        .arg(common::clip_command().get_program())
        .args(args)
        .env("CLIP_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "clip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn outputs_get_the_mode_a_new_file_gets_under_the_umask() {
    let (inputs, rootfs) = inputs();
    for (umask, want) in [("022", 0o644), ("027", 0o640)] {
        let (index, archive, copy) = (
            inputs.path(&format!("i{umask}.clip")),
            inputs.path(&format!("a{umask}.clip")),
            inputs.path(&format!("c{umask}.clip")),
        );
        clip_with_umask(umask, &["index", &inputs.reference(), "-o", s(&index)]);
        clip_with_umask(umask, &["archive", s(&rootfs), "-o", s(&archive), "--index-out", s(&copy)]);
        for out in [&index, &archive, &copy] {
            assert_eq!(mode(out), want, "{} under umask {umask}: {:o}", out.display(), mode(out));
        }
        // Replacing an existing file gives the same mode, whatever the old file had.
        std::fs::set_permissions(&index, std::fs::Permissions::from_mode(0o600)).unwrap();
        clip_with_umask(umask, &["index", &inputs.reference(), "-o", s(&index)]);
        assert_eq!(mode(&index), want);
    }
}

/// Runs `clip ARGS`, which must exit 1 within 30 s (it is killed and the test fails otherwise) with
/// `needle` in its error.
fn fails_promptly(args: &[&str], needle: &str) {
    let mut child = common::clip_command()
        .args(args)
        .env("CLIP_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    exits_within(&mut child, Duration::from_secs(30), &format!("clip {args:?} still running"));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "clip {args:?}:\n{stderr}");
    assert!(
        !stderr.contains("panicked") && stderr.contains(needle),
        "clip {args:?}: expected {needle:?} in:\n{stderr}"
    );
}

#[test]
fn an_input_that_is_not_a_regular_file_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.clip");
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o644)).unwrap();
    let target = dir.path().join("out");
    for (input, kind) in [(&fifo, "a FIFO"), (&dir.path().to_path_buf(), "a directory")] {
        let needle = format!("not a regular file ({kind})");
        fails_promptly(&["inspect", s(input)], &needle);
        fails_promptly(&["ls", s(input), "/"], &needle);
        fails_promptly(&["cat", s(input), "/etc/hostname"], &needle);
        fails_promptly(&["extract", s(input), s(&target)], &needle);
        fails_promptly(&["config", "--config", s(input)], &needle);
    }
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    // A regular file still opens (the check is not in the way).
    let (inputs, _) = inputs();
    clip_ok(&["inspect", s(&inputs.index())]);
}

//! End to end, a racing writer: another process changes the tree `clip archive` walks or `clip extract`
//! writes, at the worst moment (learned from inotify, not guessed with sleeps). A directory swapped for a
//! symlink to somewhere else must never be followed: the result holds nothing from outside the tree, and
//! nothing is written outside the target; clip either stops with a clear error or keeps the symlink as a
//! symlink.

mod common;

use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{s, unique};
use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent};

/// Starts `clip ARGS` in the background, stderr captured.
fn spawn_clip(args: &[&str]) -> Child {
    common::clip_command()
        .args(args)
        .env("CLIP_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the clip binary")
}

/// Waits until inotify reports an event that `done` accepts (or `done` accepts none when asked first);
/// `false` if `child` exited first. Panics after a minute.
fn wait_for(inotify: &Inotify, child: &mut Child, mut done: impl FnMut(Option<&InotifyEvent>) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    if done(None) {
        return true;
    }
    loop {
        assert!(Instant::now() < deadline, "the awaited inotify event did not come within a minute");
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, 100u16).expect("poll") > 0 {
            let events = inotify.read_events().expect("reading inotify events");
            if events.iter().any(|e| done(Some(e))) {
                return true;
            }
        } else if child.try_wait().expect("waiting for clip").is_some() {
            return false;
        }
    }
}

/// Whether process `pid` has `path` open.
fn has_open(pid: u32, path: &Path) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| fs::read_link(fd.path()).is_ok_and(|p| p == path))
}

/// Every regular file under `dir` (not following symlinks).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_directory_swapped_for_a_symlink_while_packing_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    fs::create_dir_all(root.join("a")).unwrap();
    fs::create_dir_all(root.join("b")).unwrap();
    fs::write(root.join("b/inside"), "inside b\n").unwrap();
    let big = root.join("a/big");
    common::write_pattern(&big, 256 << 20);
    // The secret sits outside the tree, in a directory `b` will point to.
    let secret = unique("secret");
    fs::create_dir(dir.path().join("outside")).unwrap();
    fs::write(dir.path().join("outside/shadow"), &secret).unwrap();

    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).unwrap();
    inotify.add_watch(&big, AddWatchFlags::IN_OPEN).unwrap();
    let out = dir.path().join("out.clip");
    let mut child = spawn_clip(&["archive", s(&root), "-o", s(&out)]);
    // clip listed the root (`b` is a directory) and is reading a/big: now `b` becomes a symlink.
    let opened = |e: Option<&InotifyEvent>| e.is_some_and(|e| e.mask.contains(AddWatchFlags::IN_OPEN));
    assert!(wait_for(&inotify, &mut child, opened), "clip exited before opening a/big");
    fs::rename(root.join("b"), dir.path().join("b.moved")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside"), root.join("b")).unwrap();
    assert!(has_open(child.id(), &big), "the swap came too late: clip was no longer reading a/big");

    let result = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    if !result.status.success() {
        assert_eq!(result.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("changed while packing (is the root filesystem in use?)"), "{stderr}");
        assert!(stderr.contains("rootfs/b"), "the error names the entry: {stderr}");
        assert!(!out.exists(), "a failed archive left {}", out.display());
        println!("swap while packing: refused: {}", stderr.trim());
        return;
    }
    // Packed: then `b` was kept as the symlink it became, and the secret is nowhere.
    let bytes = fs::read(&out).unwrap();
    assert!(!contains(&bytes, secret.as_bytes()), "the archive holds the secret from outside the tree");
    let target = dir.path().join("extracted");
    common::clip_ok(&["extract", s(&out), s(&target)]);
    assert!(fs::symlink_metadata(target.join("b")).unwrap().file_type().is_symlink());
    for f in files_under(&target) {
        assert!(!contains(&fs::read(&f).unwrap(), secret.as_bytes()), "{} holds the secret", f.display());
    }
    println!("swap while packing: b archived as a symlink");
}

#[test]
fn a_directory_swapped_for_a_symlink_while_extracting_is_never_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    fs::create_dir_all(root.join("a")).unwrap();
    fs::create_dir_all(root.join("d")).unwrap();
    common::write_pattern(&root.join("a/big"), 256 << 20);
    fs::write(root.join("d/x"), "written after a/big\n").unwrap();
    let archive = dir.path().join("tree.clip");
    common::clip_ok(&["archive", s(&root), "-o", s(&archive)]);
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();

    // Pass 1 creates a/ and d/, pass 2 writes a/big (first in the data) and then d/x.
    let target = dir.path().join("extracted");
    fs::create_dir(&target).unwrap();
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).unwrap();
    inotify.add_watch(&target, AddWatchFlags::IN_CREATE).unwrap();
    let mut child = spawn_clip(&["extract", s(&archive), s(&target)]);
    let made_a = |e: Option<&InotifyEvent>| {
        target.join("a").exists() || e.is_some_and(|e| e.name.as_deref() == Some("a".as_ref()))
    };
    assert!(wait_for(&inotify, &mut child, made_a), "clip exited before creating a/");
    inotify.add_watch(&target.join("a"), AddWatchFlags::IN_CREATE).unwrap();
    let big = target.join("a/big");
    let made_big =
        |e: Option<&InotifyEvent>| big.exists() || e.is_some_and(|e| e.name.as_deref() == Some("big".as_ref()));
    assert!(wait_for(&inotify, &mut child, made_big), "clip exited before creating a/big");
    // Now d/ becomes a symlink to a directory outside the target.
    fs::rename(target.join("d"), target.join("d.moved")).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("d")).unwrap();
    assert!(has_open(child.id(), &big), "the swap came too late: clip was no longer writing a/big");

    let result = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let escaped: Vec<_> = fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(escaped.is_empty(), "extract wrote {escaped:?} through the symlink, outside its target; stderr:\n{stderr}");
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("changed while extracting"), "{stderr}");
    assert!(stderr.contains("extracted/d"), "the error names the entry: {stderr}");
    println!("swap while extracting: refused: {}", stderr.trim());
}

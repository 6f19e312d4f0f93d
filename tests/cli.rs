//! End to end, the command line as a new user meets it: output into a closed pipe, a mountpoint that is
//! not empty, the logs of a clean mount, `ls -l`, the default log level, and error messages that name a
//! thing once and hint at the right fix.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use clip_testkit::*;
use common::{s, text, wait_within, Indexed};

/// A small image: a few files, one of 1 MiB (more than a pipe holds), a directory.
fn image() -> Image {
    let mut l = LayerBuilder::new();
    l.dir("etc").file("etc/motd", "hello\nsecond line\n").file("etc/hostname", "clip\n");
    l.entry(Entry::file("big", pseudo_random_bytes(7, 1 << 20)));
    Image::from_tars(vec![l.finish()], Compression::Gzip)
}

/// The clip binary with `args`, default logging (no `CLIP_LOG`), stdin closed.
fn clip_cmd(args: &[&str]) -> Command {
    let mut cmd = common::clip_command();
    cmd.args(args).env_remove("CLIP_LOG").env_remove("CLIP_CONFIG").stdin(Stdio::null());
    cmd
}

/// Runs `args` with stdout a pipe whose reader is already gone: the first write fails with `EPIPE`.
fn into_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    clip_cmd(args).stdout(Stdio::from(writer)).stderr(Stdio::piped()).output().unwrap()
}

/// Runs `args`, reads the first line of its stdout, then closes the pipe (as `| head -1` does).
fn first_line_only(args: &[&str]) -> (Vec<u8>, Output) {
    let mut child = clip_cmd(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut line = Vec::new();
    BufReader::new(child.stdout.take().unwrap()).read_until(b'\n', &mut line).unwrap();
    (line, child.wait_with_output().unwrap())
}

#[track_caller]
fn assert_quiet_success(what: &str, out: &Output) {
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{what}: {} with stderr:\n{stderr}", out.status);
    assert!(!stderr.contains("panicked") && !stderr.to_lowercase().contains("broken pipe"), "{what}:\n{stderr}");
    assert_eq!(stderr, "", "{what}: nothing on stderr");
}

#[test]
fn a_closed_pipe_ends_every_printing_command_quietly() {
    let img = Indexed::new(&image());
    let index = img.index();
    let file = s(&index);
    let commands: &[&[&str]] = &[
        &["inspect", file],
        &["inspect", "--json", file],
        &["ls", file, "/"],
        &["ls", "-l", file, "/etc"],
        &["ls", "--json", file, "/etc"],
        &["cat", file, "/etc/motd"],
        &["cat", file, "/big"],
        &["config"],
    ];
    for args in commands {
        assert_quiet_success(&format!("clip {args:?} into a closed pipe"), &into_closed_pipe(args));
    }
    // Reading one line of a file larger than a pipe holds: clip is blocked writing when the reader goes.
    let (line, out) = first_line_only(&["cat", file, "/big"]);
    assert!(!line.is_empty());
    assert_quiet_success("clip cat /big | head -1", &out);
    let (line, out) = first_line_only(&["inspect", file]);
    assert!(line.starts_with(b"kind:"), "{}", text(&line));
    assert_quiet_success("clip inspect | head -1", &out);
}

#[test]
fn mount_refuses_a_directory_that_is_not_empty() {
    let img = Indexed::new(&image());
    let dir = img.dir.path().join("full");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("precious"), "mine\n").unwrap();
    let mut child =
        clip_cmd(&["mount", s(&img.index()), s(&dir), "--no-cache"]).stderr(Stdio::piped()).spawn().unwrap();
    wait_within(Duration::from_secs(20), "clip mount neither mounted nor exited", || {
        if common::is_mountpoint(&dir) {
            let _ = Command::new("umount").arg(&dir).status();
            let _ = child.wait();
            panic!("clip mount mounted over a directory that is not empty");
        }
        child.try_wait().unwrap().is_some()
    });
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("is not empty") && stderr.contains("mount on an empty directory"), "{stderr}");
    assert!(!common::is_mountpoint(&dir));
    assert_eq!(std::fs::read_to_string(dir.join("precious")).unwrap(), "mine\n");
}

#[test]
fn a_clean_mount_and_unmount_log_no_warning() {
    let img = Indexed::new(&image());
    // Ended by SIGTERM: clip unmounts.
    let m = img.mount();
    assert_eq!(std::fs::read_to_string(m.dir.join("etc/motd")).unwrap(), "hello\nsecond line\n");
    let log = m.stop();
    assert!(log.contains("unmounted"), "{log}");
    assert!(!log.contains("WARN"), "{log}");

    // Unmounted from outside (`umount DIR`, as the README shows): clip notices and exits.
    let m = img.mount();
    assert!(Command::new("umount").arg(&m.dir).status().unwrap().success());
    let (status, log) = m.exited_within(Duration::from_secs(20), "clip mount did not exit after umount");
    assert!(status.success() && log.contains("unmounted from outside"), "{log}");
    assert!(!log.contains("WARN"), "{log}");
}

/// `date -u -d @SECS +FORMAT` in the C locale: the oracle for `ls -l` dates.
fn gnu_date(secs: i64, format: &str) -> String {
    let out = Command::new("date").env("LC_ALL", "C").args(["-u", "-d", &format!("@{secs}"), format]).output().unwrap();
    text(&out.stdout).trim_end().to_owned()
}

#[test]
fn ls_long_shows_dates_and_owner_names_as_ls_does() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let (old, recent, future) = (1_000_000_000, now - 3600, now + 400 * 86_400);
    let mut l = LayerBuilder::new();
    l.dir("etc").file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n");
    l.file("etc/group", "root:x:0:\nstaff:x:1001:app\n").dir("data");
    l.entry(Entry::file("data/old", "x\n").owner(1000, 1001).mtime(old as u64, 5));
    l.entry(Entry::file("data/recent", "x\n").owner(0, 0).mtime(recent as u64, 0));
    l.entry(Entry::file("data/future", "x\n").owner(4242, 4343).mtime(future as u64, 0));
    let img = Indexed::new(&Image::from_tars(vec![l.finish()], Compression::Gzip));

    let out = clip_cmd(&["ls", "-l", s(&img.index()), "/data"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want = [
        format!("-rw-r--r-- 1 4242  4343 2 {} future", gnu_date(future, "+%b %e  %Y")),
        format!("-rw-r--r-- 1 app  staff 2 {} old", gnu_date(old, "+%b %e  %Y")),
        format!("-rw-r--r-- 1 root root  2 {} recent", gnu_date(recent, "+%b %e %H:%M")),
    ];
    assert_eq!(text(&out.stdout).lines().collect::<Vec<_>>(), want);
    assert_eq!(want[1], "-rw-r--r-- 1 app  staff 2 Sep  9  2001 old");

    // --json keeps the exact values.
    let out = clip_cmd(&["ls", "--json", s(&img.index()), "/data/old"]).output().unwrap();
    let entry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entry[0]["mtime"], serde_json::json!({"sec": old, "nsec": 5}));
    assert_eq!((entry[0]["uid"].as_u64(), entry[0]["gid"].as_u64()), (Some(1000), Some(1001)));
}

#[test]
fn errors_name_the_file_once() {
    let img = Indexed::new(&image());
    let missing = img.dir.path().join("missing.clip");
    let not_clip = img.dir.path().join("notes.txt");
    std::fs::write(&not_clip, "not an index, just notes\n".repeat(4)).unwrap();
    let mnt = img.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out_dir = img.dir.path().join("out");
    let cases: &[(&[&str], &Path, &str)] = &[
        (&["inspect", s(&missing)], &missing, "No such file or directory"),
        (&["inspect", "--json", s(&missing)], &missing, "No such file or directory"),
        (&["ls", "-l", s(&missing)], &missing, "No such file or directory"),
        (&["cat", s(&missing), "/etc/motd"], &missing, "No such file or directory"),
        (&["extract", s(&missing), s(&out_dir)], &missing, "No such file or directory"),
        (&["mount", s(&missing), s(&mnt)], &missing, "No such file or directory"),
        (&["inspect", s(&not_clip)], &not_clip, "not a .clip file"),
    ];
    for (args, named, cause) in cases {
        let out = clip_cmd(args).output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "clip {args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "clip {args:?}: one line:\n{stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(cause), "clip {args:?}: {stderr}");
        assert_eq!(stderr.matches(s(named)).count(), 1, "clip {args:?} names {} once: {stderr}", named.display());
    }
    assert_eq!(
        text(&clip_cmd(&["inspect", s(&missing)]).output().unwrap().stderr),
        format!("error: {}: No such file or directory (os error 2)\n", missing.display())
    );
}

#[test]
fn a_registry_that_is_not_running_gets_the_right_hint() {
    let dir = tempfile::tempdir().unwrap();
    let addr = common::free_addr();
    let out = clip_cmd(&["index", &format!("{addr}/x"), "-o", s(&dir.path().join("x.clip"))]).output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(stderr.trim_end().ends_with(&format!("(is the registry running at {addr}?)")), "{stderr}");
    assert!(!stderr.contains("--plain-http"), "plain HTTP is already used for {addr}: {stderr}");
}

#[test]
fn one_shot_commands_log_nothing_by_default_and_mount_logs_info() {
    let img = Indexed::new(&image());
    let out = clip_cmd(&["cat", s(&img.index()), "/big"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout == pseudo_random_bytes(7, 1 << 20), "the file's bytes and nothing else on stdout");
    assert_eq!(text(&out.stderr), "", "nothing on stderr");

    // `clip mount` is a daemon: info by default (its log is the record of what it did), fuser's own lines not.
    let mnt = img.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let child = clip_cmd(&["mount", s(&img.index()), s(&mnt), "--no-cache"]).stderr(Stdio::piped()).spawn().unwrap();
    wait_within(Duration::from_secs(20), "clip mount did not mount", || common::is_mountpoint(&mnt));
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let log = text(&child.wait_with_output().unwrap().stderr);
    assert!(log.contains(" INFO clip_node::mount: mounted "), "{log}");
    assert!(!log.contains("fuser") && !log.contains("DEBUG"), "{log}");
}

//! End to end, careless paths: an input that is a FIFO or a directory gets "not a regular file" at once
//! (`clip inspect FIFO` once blocked forever).

mod common;

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clip_testkit::{Compression, Image, LayerBuilder, OciLayoutBuilder};
use common::{clip_ok, s};
use nix::sys::stat::Mode;

/// A small OCI layout (image `t`) and a temporary directory.
struct Inputs {
    dir: tempfile::TempDir,
    layout: OciLayoutBuilder,
}

impl Inputs {
    fn new() -> Inputs {
        let mut l = LayerBuilder::new();
        l.file("etc/hostname", "clip\n");
        let mut layout = OciLayoutBuilder::new();
        layout.add_image("t", &Image::from_tars(vec![l.finish()], Compression::Gzip));
        let dir = tempfile::tempdir().unwrap();
        Inputs { dir, layout }
    }

    fn image(&self) -> String {
        format!("oci:{}:t", self.layout.path().display())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Runs `clip ARGS`, which must exit 1 within 30 s (it is killed and the test fails otherwise) with
/// `needle` in its error.
fn fails_promptly(args: &[&str], needle: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_clip"))
        .args(args)
        .env("CLIP_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("clip {args:?} still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
        fails_promptly(&["--config", s(input), "config"], &needle);
    }
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    // A regular file still opens (the check is not in the way).
    let inputs = Inputs::new();
    let index = inputs.path("ok.clip");
    clip_ok(&["index", &inputs.image(), "-o", s(&index)]);
    clip_ok(&["inspect", s(&index)]);
}

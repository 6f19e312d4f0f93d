//! Shared helpers of the end-to-end tests: run the real `clip` binary and check its outcome.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs `clip ARGS`; returns its output whatever the exit code.
pub fn clip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clip"))
        .args(args)
        .env("CLIP_LOG", "warn")
        .output()
        .expect("running the clip binary")
}

/// Runs `clip ARGS` and panics with its stderr unless it succeeds; returns stdout.
pub fn clip_ok(args: &[&str]) -> Vec<u8> {
    let out = clip(args);
    assert!(out.status.success(), "clip {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Runs `clip ARGS`, expects it to fail cleanly (non-zero exit, an `error:` line, no panic) with a message
/// containing `needle`; returns stderr.
pub fn clip_fails(args: &[&str], needle: &str) -> String {
    let out = clip(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "clip {args:?} should have failed; stderr:\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "clip {args:?}: exit code {:?}; stderr:\n{stderr}", out.status.code());
    assert!(!stderr.contains("panicked"), "clip {args:?} panicked:\n{stderr}");
    assert!(stderr.contains("error:"), "clip {args:?}: no error line:\n{stderr}");
    assert!(stderr.to_lowercase().contains(&needle.to_lowercase()), "clip {args:?}: expected {needle:?} in:\n{stderr}");
    stderr
}

/// A path as a `&str` for command lines.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

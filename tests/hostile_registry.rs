//! End to end, a registry that lies or stalls, reached through the fault-injecting proxy of `clip-testkit`
//! in front of a real registry: an endless manifest or token answer is refused at its size cap (never a
//! memory blow-up or an abort), `clip index` against a registry that stalls after every piece ends with a
//! clear error within its `--timeout`, and an endless token answer in the middle of a mount fails that read
//! with EIO while the mount stays up and works again once the registry behaves.

mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clip_testkit::*;
use common::{s, Served, EIO};

/// A one-layer image with a 4 MiB file `data/big` (gzip) and a small `etc/hello`.
fn image() -> (Image, Vec<u8>) {
    let big = pseudo_random_bytes(42, 4 << 20);
    let mut l = LayerBuilder::new();
    l.dir("data");
    l.file("data/big", big.clone());
    l.dir("etc");
    l.file("etc/hello", b"hello\n".to_vec());
    (Image::new(vec![Layer::new(l.finish(), Compression::Gzip)]), big)
}

/// Runs `clip ARGS`, killing it if it has not ended after `limit`; returns (exit code, stderr, time).
fn clip_within(args: &[&str], limit: Duration) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut child =
        common::clip_command().args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawning clip");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    common::exits_within(&mut child, limit, &format!("clip {args:?} was still running"));
    let status = child.wait().unwrap();
    (status.code(), reader.join().unwrap(), started.elapsed())
}

#[test]
fn an_endless_manifest_is_refused_at_its_cap() {
    let (img, _) = image();
    let served = Served::new(&img);
    served.proxy().set_faults(vec![Fault::new(FaultKind::EndlessBody).path_contains("/manifests/")]);
    let out = served.dir.path().join("again.clip");
    let image = served.proxy().image_ref("img:t");
    let (code, stderr, _) = clip_within(&["index", &image, "-o", s(&out)], Duration::from_secs(120));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("larger than the 8388608 bytes clip accepts"), "{stderr}");
    assert!(stderr.contains("/v2/img/manifests/t"), "the error names the URL: {stderr}");
    assert!(!stderr.contains("panicked") && !out.exists(), "{stderr}");
}

#[test]
fn an_endless_token_answer_is_refused_at_its_cap() {
    let (img, _) = image();
    let served = Served::new(&img);
    served.proxy().set_faults(vec![
        Fault::new(FaultKind::EndlessBody).path_contains("/token"),
        Fault::new(FaultKind::BearerChallenge),
    ]);
    let out = served.dir.path().join("again.clip");
    let image = served.proxy().image_ref("img:t");
    let (code, stderr, _) = clip_within(&["index", &image, "-o", s(&out)], Duration::from_secs(120));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("token request") && stderr.contains("larger than the 1048576 bytes"), "{stderr}");
}

#[test]
fn indexing_from_a_registry_that_stalls_after_every_piece_ends_within_its_timeout() {
    let (img, _) = image();
    let served = Served::new(&img);
    // Every blob answer brings 64 KiB and then nothing: each resume makes progress, which used to refill
    // the retry budget forever (the index never ended).
    served.proxy().set_faults(vec![Fault::new(FaultKind::StallAfter { after_bytes: 64 << 10 }).blobs_only()]);
    let out = served.dir.path().join("again.clip");
    let image = served.proxy().image_ref("img:t");
    let (code, stderr, took) =
        clip_within(&["index", &image, "-o", s(&out), "--timeout", "8", "--no-reuse"], Duration::from_secs(90));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("did not finish within 8 s (--timeout)"), "{stderr}");
    assert!(took >= Duration::from_secs(8), "{took:?}");
    assert!(!out.exists());
}

#[test]
fn an_endless_token_answer_during_a_mount_fails_the_read_and_the_mount_stays_up() {
    let (img, big) = image();
    let served = Served::new(&img);
    let mut m = served.mount("mnt", &["--read-timeout", "20"]);
    assert_eq!(std::fs::read(m.dir.join("etc/hello")).unwrap(), b"hello\n");

    // The registry now wants a token, and its token service never stops talking.
    served.proxy().set_faults(vec![
        Fault::new(FaultKind::EndlessBody).path_contains("/token"),
        Fault::new(FaultKind::BearerChallenge),
    ]);
    let err = std::fs::read(m.dir.join("data/big")).expect_err("a read through an endless token succeeded");
    assert_eq!(err.raw_os_error(), Some(EIO), "{err}");
    assert!(m.child.as_mut().unwrap().try_wait().unwrap().is_none(), "the mount process died");
    assert!(!served.proxy().stats().requests_to("/token").is_empty(), "no token was asked for");

    // The registry behaves again: the same mount serves the file (after the store's failure hold-off).
    served.proxy().set_faults(vec![]);
    common::wait_within(Duration::from_secs(60), "the mount did not recover", || {
        match std::fs::read(m.dir.join("data/big")) {
            Ok(got) => {
                assert!(got == big, "wrong bytes");
                true
            }
            Err(_) => false,
        }
    });
    let stderr = m.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

//! `S3Object` against a real S3 server (moto on 127.0.0.1): ranged reads, prefix reads, single and
//! multipart uploads, and the errors a user sees for a missing object, refused credentials and a dead server.

use std::collections::HashMap;

use clip_s3::{S3Config, S3Error, S3Object, S3Options, S3Url};
use clip_testkit::{pseudo_random_bytes, S3Server};

fn config(s3: &S3Server, addr: &str) -> S3Config {
    let env: HashMap<String, String> = s3.env_for(addr).into_iter().collect();
    S3Config::resolve(&env, None, &S3Options::default()).unwrap()
}

fn object(s3: &S3Server, url: &str) -> S3Object {
    S3Object::with_config(&url.parse::<S3Url>().unwrap(), config(s3, &s3.addr())).unwrap()
}

#[tokio::test]
async fn ranged_and_prefix_reads() {
    let s3 = S3Server::start();
    s3.create_bucket("clip-test");
    let data = pseudo_random_bytes(1, 100_000);
    s3.put_object("clip-test", "dir/blob", &data);
    let o = object(&s3, "s3://clip-test/dir/blob");
    assert_eq!(o.size().await.unwrap(), 100_000);
    assert_eq!(&o.read_range(12_345..54_321).await.unwrap()[..], &data[12_345..54_321]);
    assert!(o.read_range(5..5).await.unwrap().is_empty());
    let (prefix, size) = o.read_prefix(1 << 20).await.unwrap();
    assert_eq!((&prefix[..], size), (&data[..], 100_000));
    let (prefix, _) = o.read_prefix(10).await.unwrap();
    assert_eq!(&prefix[..], &data[..10]);
    let stats = o.stats();
    assert_eq!(stats.requests, 4);
    assert_eq!(stats.bytes, (54_321 - 12_345) + 100_000 + 10);
    // A range past the end is an error, not a short answer.
    let e = o.read_range(99_000..101_000).await.unwrap_err();
    assert!(e.to_string().contains("received 1000 of 2000 bytes"), "{e}");
}

#[tokio::test]
async fn uploads_small_and_multipart() {
    let s3 = S3Server::start();
    s3.create_bucket("clip-test");
    let dir = tempfile::tempdir().unwrap();
    for (name, len) in [("small", 1000usize), ("big", (8 << 20) * 2 + 12_345)] {
        let data = pseudo_random_bytes(len as u64, len);
        let path = dir.path().join(name);
        std::fs::write(&path, &data).unwrap();
        let o = object(&s3, &format!("s3://clip-test/up/{name}"));
        let seen = std::sync::atomic::AtomicU64::new(0);
        let progress = |n: u64| seen.store(n, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(o.upload_file(&path, Some(&progress)).await.unwrap(), len as u64);
        assert_eq!(seen.into_inner(), len as u64);
        assert!(s3.get_object("clip-test", &format!("up/{name}")).unwrap() == data, "{name} differs");
    }
}

#[tokio::test]
async fn errors_name_the_object_and_the_fix() {
    let mut s3 = S3Server::start();
    s3.create_bucket("clip-test");
    let missing = object(&s3, "s3://clip-test/nope");
    let e = missing.read_range(0..10).await.unwrap_err();
    assert!(matches!(e, S3Error::NotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("s3://clip-test/nope not found"), "{e}");
    let e = object(&s3, "s3://no-such-bucket/x").size().await.unwrap_err();
    assert!(matches!(e, S3Error::NotFound { .. }), "{e:?}");

    s3.kill();
    let started = std::time::Instant::now();
    let e = missing.read_range(0..10).await.unwrap_err();
    assert!(matches!(e, S3Error::Request { .. }), "{e:?}");
    assert!(e.to_string().contains("is the S3 endpoint http://127.0.0.1"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "gave up only after {:?}", started.elapsed());
}

#[tokio::test]
async fn credentials_are_checked_and_never_shown() {
    let s3 = S3Server::start_with_auth(&["clip-auth"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"hello").unwrap();
    let good = object(&s3, "s3://clip-auth/f");
    good.upload_file(&path, None).await.unwrap();
    assert_eq!(&good.read_range(1..4).await.unwrap()[..], b"ell");

    let url: S3Url = "s3://clip-auth/f".parse().unwrap();
    for (id, secret) in
        [("AKIAWRONGWRONGWRONG1", "nope-not-the-secret"), (&s3.credentials().0[..], "wrong-secret-value")]
    {
        let mut env: HashMap<String, String> = s3.env().into_iter().collect();
        env.insert("AWS_ACCESS_KEY_ID".into(), id.into());
        env.insert("AWS_SECRET_ACCESS_KEY".into(), secret.into());
        let bad = S3Object::with_config(&url, S3Config::resolve(&env, None, &S3Options::default()).unwrap()).unwrap();
        let e = bad.read_range(0..5).await.unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, S3Error::Auth { .. }), "{e:?}");
        assert!(msg.contains("check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"), "{msg}");
        assert!(!msg.contains(secret), "secret in message: {msg}");
    }
}

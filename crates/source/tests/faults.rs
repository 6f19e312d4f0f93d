//! The retry policy against a real registry behind the fault-injecting proxy of `clip-testkit`: each
//! fault the proxy can inject, and what the registry source makes of it (the right bytes after retries,
//! or a clear error after a bounded number of attempts).

mod common;

use std::time::{Duration, Instant};

use clip_source::{open, BlobSource, Descriptor, ImageRef, RegistrySource, RetryPolicy, SourceError, SourceOptions};
use clip_testkit::{
    pseudo_random_bytes, push_with_creds, Compression, Fault, FaultKind, Image, Layer, LayerBuilder, OciLayoutBuilder,
    Proxy, ProxyConfig, Registry,
};
use common::docker_config_with;

const PASSWORD: &str = "pr0xy-s3cret-Pa55";

/// A registry holding one image (`repo:t`) with a 2 MiB uncompressed layer.
struct Setup {
    registry: Registry,
    layer: Vec<u8>,
    desc: Descriptor,
    config_dir: tempfile::TempDir,
}

impl Setup {
    fn new(with_auth: bool) -> Setup {
        let registry = if with_auth { Registry::start_with_auth("puller", PASSWORD) } else { Registry::start() };
        let mut tar = LayerBuilder::new();
        tar.file("blob", pseudo_random_bytes(11, 2 << 20));
        let layer = Layer::new(tar.finish(), Compression::None);
        let mut layout = OciLayoutBuilder::new();
        let built = layout.add_image("t", &Image::new(vec![layer.clone()]));
        push_with_creds(layout.path(), "t", &registry.addr(), "repo:t", registry.credentials());
        let d = &built.layers[0];
        let desc = Descriptor::new(&d.media_type, d.digest.to_string().parse().unwrap(), d.size);
        Setup { registry, layer: layer.blob().to_vec(), desc, config_dir: tempfile::tempdir().unwrap() }
    }

    /// Source options for reaching the registry at `addr` (credentials for it when the registry wants
    /// some), retrying quickly.
    fn opts(&self, addr: &str) -> SourceOptions {
        let config = match self.registry.credentials() {
            Some((user, password)) => docker_config_with(self.config_dir.path(), addr, user, password),
            None => {
                let p = self.config_dir.path().join("config.json");
                std::fs::write(&p, "{}").unwrap();
                p
            }
        };
        SourceOptions {
            docker_config: Some(config),
            retry: RetryPolicy {
                attempts: 4,
                base_delay: Duration::from_millis(20),
                max_delay: Duration::from_secs(3),
                ..RetryPolicy::default()
            },
            ..SourceOptions::default()
        }
    }

    async fn source(&self, proxy: &Proxy) -> RegistrySource {
        RegistrySource::connect(&proxy.addr(), "repo", &self.opts(&proxy.addr())).await.unwrap()
    }
}

fn proxy(setup: &Setup) -> Proxy {
    Proxy::start(&setup.registry.addr(), ProxyConfig::default())
}

/// Reads 600 KiB from the middle of the layer and checks them.
async fn read_middle(setup: &Setup, source: &RegistrySource) -> Result<(), SourceError> {
    let range = 700_000..1_314_400;
    let got = source.read_range(&setup.desc, range.clone()).await?;
    assert!(got[..] == setup.layer[range.start as usize..range.end as usize], "wrong bytes");
    Ok(())
}

#[tokio::test]
async fn transient_faults_are_retried_until_the_bytes_are_right() {
    let setup = Setup::new(false);
    let proxy = proxy(&setup);
    let source = setup.source(&proxy).await;
    let faults = [
        FaultKind::Status(503),
        FaultKind::Status(500),
        FaultKind::ResetMidBody { after_bytes: 100_000 },
        FaultKind::TruncateBody { after_bytes: 200_000 },
        FaultKind::DelayFirstByte(Duration::from_millis(300)),
        FaultKind::IgnoreRange,
    ];
    for kind in faults {
        proxy.reset_stats();
        let retries_before = source.retries();
        proxy.set_faults(vec![Fault::new(kind.clone()).blobs_only().times(2)]);
        read_middle(&setup, &source).await.unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        let stats = proxy.stats();
        let retried = source.retries() - retries_before;
        // A slow answer and a whole blob that is skipped through are not failures: one request.
        let failures = if matches!(kind, FaultKind::DelayFirstByte(_) | FaultKind::IgnoreRange) { 0 } else { 2 };
        assert_eq!(retried, failures, "{kind:?}: {:?}", stats.log);
        assert_eq!(stats.blob_requests, failures + 1, "{kind:?}: {:?}", stats.log);
        assert_eq!(stats.faults_injected, failures.max(1), "{kind:?}: {:?}", stats.log);
    }
}

#[tokio::test]
async fn a_read_cut_short_resumes_where_it_stopped() {
    let setup = Setup::new(false);
    let proxy = proxy(&setup);
    let source = setup.source(&proxy).await;
    proxy.set_faults(vec![Fault::new(FaultKind::TruncateBody { after_bytes: 300_000 }).blobs_only().times(1)]);
    read_middle(&setup, &source).await.unwrap();
    let stats = proxy.stats();
    let ranges: Vec<_> = stats.log.iter().filter_map(|r| r.range.clone()).collect();
    assert_eq!(ranges, ["bytes=700000-1314399", "bytes=1000000-1314399"], "{:?}", stats.log);
}

#[tokio::test]
async fn too_many_requests_waits_as_long_as_retry_after_says() {
    let setup = Setup::new(false);
    let proxy = proxy(&setup);
    let source = setup.source(&proxy).await;
    proxy.set_faults(vec![Fault::new(FaultKind::TooManyRequests { retry_after_secs: 1 }).blobs_only().times(1)]);
    let started = Instant::now();
    read_middle(&setup, &source).await.unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1), "did not wait for Retry-After: {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn retries_are_bounded_and_permanent_errors_are_not_retried() {
    let setup = Setup::new(false);
    let proxy = proxy(&setup);
    let source = setup.source(&proxy).await;

    proxy.set_faults(vec![Fault::new(FaultKind::Status(502)).blobs_only()]);
    let err = read_middle(&setup, &source).await.unwrap_err();
    assert!(err.to_string().contains("502"), "{err}");
    assert_eq!(proxy.stats().blob_requests, 4, "4 attempts in all");

    for (status, needle) in [(404, "not found"), (403, "authentication"), (400, "400")] {
        proxy.reset_stats();
        proxy.set_faults(vec![Fault::new(FaultKind::Status(status)).blobs_only()]);
        let err = read_middle(&setup, &source).await.unwrap_err().to_string();
        assert!(err.contains(needle), "{status}: {err}");
        assert_eq!(proxy.stats().blob_requests, 1, "{status} must not be retried");
    }

    // The registry is back: the next read works at once.
    proxy.set_faults(vec![]);
    read_middle(&setup, &source).await.unwrap();
}

#[tokio::test]
async fn manifests_are_retried_too() {
    let setup = Setup::new(false);
    let proxy = proxy(&setup);
    proxy.set_faults(vec![
        Fault::new(FaultKind::Status(503)).path_contains("/manifests/").times(2),
        Fault::new(FaultKind::TooManyRequests { retry_after_secs: 0 }).path_contains("/blobs/").times(1),
    ]);
    let reference: ImageRef = proxy.image_ref("repo:t").parse().unwrap();
    let (image, _) = open(&reference, &setup.opts(&proxy.addr())).await.unwrap();
    assert_eq!(image.layers[0].digest, setup.desc.digest);
    assert_eq!(proxy.stats().faults_injected, 3);
}

#[tokio::test]
async fn unauthorized_mid_run_authenticates_again_and_goes_on() {
    let setup = Setup::new(true);
    let proxy = proxy(&setup);
    let source = setup.source(&proxy).await;
    read_middle(&setup, &source).await.unwrap();
    // The registry now rejects what we send once, as it would an expired token.
    proxy.reset_stats();
    proxy.set_faults(vec![Fault::new(FaultKind::Unauthorized).blobs_only().times(1)]);
    read_middle(&setup, &source).await.unwrap();
    let stats = proxy.stats();
    assert_eq!(stats.faults_injected, 1);
    assert_eq!(stats.requests_to("/blobs/").len(), 2, "{:?}", stats.log);
    assert!(stats.log.iter().any(|r| r.path == "/v2/"), "no new authentication: {:?}", stats.log);

    // Rejected again after authenticating again: an auth error, not a loop.
    proxy.set_faults(vec![Fault::new(FaultKind::Unauthorized).blobs_only()]);
    let err = read_middle(&setup, &source).await.unwrap_err().to_string();
    assert!(err.contains("authentication"), "{err}");
    assert!(!err.contains(PASSWORD) && !format!("{source:?}").contains(PASSWORD), "{err}");
}

#[tokio::test]
async fn redirects_to_another_host_are_followed() {
    let setup = Setup::new(false);
    let cdn = proxy(&setup);
    let front = proxy(&setup);
    let source = setup.source(&front).await;
    front.set_faults(vec![Fault::new(FaultKind::Redirect { to: cdn.addr() }).blobs_only()]);
    read_middle(&setup, &source).await.unwrap();
    assert_eq!(front.stats().requests_to("/blobs/")[0].status, 307);
    assert_eq!(cdn.stats().requests_to("/blobs/").len(), 1);
    assert_eq!(cdn.stats().requests_to("/blobs/")[0].status, 206);
}

#[tokio::test]
async fn flipped_bits_are_delivered_as_sent_for_the_caller_to_verify() {
    // The source does not verify ranges (it cannot: digests cover whole blobs); the content store
    // hashes every span. Prove the bytes arrive as the proxy sent them, so a store test with the same
    // fault shows the store catches it.
    let setup = Setup::new(false);
    let proxy = proxy(&setup);
    let source = setup.source(&proxy).await;
    proxy.set_faults(vec![Fault::new(FaultKind::FlipBit { offset: 10 }).blobs_only().times(1)]);
    let got = source.read_range(&setup.desc, 1000..2000).await.unwrap();
    assert_eq!(got[10], setup.layer[1010] ^ 1);
    assert_eq!(got[..10], setup.layer[1000..1010]);
}

#[tokio::test]
async fn a_whole_blob_stream_that_breaks_off_resumes_where_it_stopped() {
    use futures::StreamExt;
    let setup = Setup::new(false);
    let proxy = proxy(&setup);
    let source = setup.source(&proxy).await;
    proxy.set_faults(vec![
        Fault::new(FaultKind::ResetMidBody { after_bytes: 400_000 }).blobs_only().times(1),
        Fault::new(FaultKind::TruncateBody { after_bytes: 300_000 }).blobs_only().times(1),
        Fault::new(FaultKind::IgnoreRange).blobs_only().times(1),
    ]);
    let mut stream = source.open_blob(&setup.desc).await.unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert!(got == setup.layer, "wrong bytes after resuming");
    let stats = proxy.stats();
    let ranges: Vec<_> = stats.requests_to("/blobs/").iter().map(|r| r.range.clone()).collect();
    assert_eq!(ranges.len(), 3, "{:?}", stats.log);
    assert_eq!(ranges[0], None);
    let start = |r: &Option<String>| -> u64 {
        let r = r.as_deref().unwrap_or_else(|| panic!("no Range on a resumed request: {ranges:?}"));
        r.strip_prefix("bytes=").and_then(|r| r.split('-').next()).unwrap().parse().unwrap()
    };
    // Each resume starts where the bytes received so far end (a reset may lose some in flight).
    assert!(0 < start(&ranges[1]) && start(&ranges[1]) <= 400_000, "{ranges:?}");
    assert_eq!(start(&ranges[2]), start(&ranges[1]) + 300_000, "{ranges:?}");
    assert_eq!(source.retries(), 2);

    // A stall (no bytes at all, every time) ends the stream with an error after the policy's attempts.
    proxy.reset_stats();
    proxy.set_faults(vec![
        Fault::new(FaultKind::ResetMidBody { after_bytes: 100_000 }).blobs_only().times(1),
        Fault::new(FaultKind::Status(503)).blobs_only(),
    ]);
    let mut stream = source.open_blob(&setup.desc).await.unwrap();
    let mut last = None;
    while let Some(chunk) = stream.next().await {
        last = Some(chunk);
    }
    let err = last.unwrap().unwrap_err().to_string();
    assert!(err.contains("503"), "{err}");
    // The policy's 4 attempts: the one that broke off and 3 resumes.
    assert_eq!(proxy.stats().blob_requests, 4, "{:?}", proxy.stats().log);
}

/// Options that retry quickly and measure the rate floor over `window`.
fn strict(setup: &Setup, proxy: &Proxy, window: Duration, total_attempts: u32) -> SourceOptions {
    let mut opts = setup.opts(&proxy.addr());
    opts.retry = RetryPolicy {
        attempts: 4,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        total_attempts,
        min_rate: 64 << 10,
        rate_window: window,
    };
    opts
}

#[tokio::test]
async fn an_endless_manifest_fails_at_the_cap_without_growing() {
    let setup = Setup::new(false);
    let proxy = proxy(&setup);
    proxy.set_faults(vec![Fault::new(FaultKind::EndlessBody).path_contains("/manifests/")]);
    let reference: ImageRef = proxy.image_ref("repo:t").parse().unwrap();
    let err = open(&reference, &setup.opts(&proxy.addr())).await.unwrap_err();
    assert!(matches!(err, SourceError::AnswerTooLarge { limit, .. } if limit == 8 << 20), "{err}");
    let text = err.to_string();
    assert!(text.contains("manifest t") && text.contains("/v2/repo/manifests/t"), "{text}");
    // Refused at the cap, never retried (a retry would read another 8 MiB).
    let stats = proxy.stats();
    assert_eq!(stats.requests_to("/manifests/").len(), 1, "{:?}", stats.log);
    // The proxy counts what it sent, socket buffers included, until it noticed the hang-up.
    assert!(stats.bytes < 64 << 20, "read {} bytes of an endless body", stats.bytes);
}

#[tokio::test]
async fn an_endless_token_answer_fails_at_the_cap() {
    let setup = Setup::new(false);
    let proxy = proxy(&setup);
    proxy.set_faults(vec![
        Fault::new(FaultKind::EndlessBody).path_contains("/token"),
        Fault::new(FaultKind::BearerChallenge),
    ]);
    let err = RegistrySource::connect(&proxy.addr(), "repo", &setup.opts(&proxy.addr())).await.unwrap_err();
    assert!(matches!(err, SourceError::AnswerTooLarge { limit, .. } if limit == clip_source::MAX_TOKEN_BYTES), "{err}");
    assert!(err.to_string().contains("token"), "{err}");
    assert!(proxy.stats().bytes < 64 << 20, "read {} bytes of an endless token", proxy.stats().bytes);
}

#[tokio::test]
async fn a_bearer_challenge_asks_its_realm_for_a_repository_scoped_token() {
    // The proxy challenges for a token: clip asks the realm the challenge names, for this repository's pull
    // scope and the challenge's service. (The test kit has no token server: sending the token on is not
    // tested against a real one.)
    let setup = Setup::new(false);
    let proxy = proxy(&setup);
    let token = Fault::new(FaultKind::Status(200)).path_contains("/token");
    proxy.set_faults(vec![token, Fault::new(FaultKind::BearerChallenge).path_contains("/v2/").times(1)]);
    let err = RegistrySource::connect(&proxy.addr(), "repo", &setup.opts(&proxy.addr())).await.unwrap_err();
    // The proxy's 200 answer to /token is an error envelope, not a token: a clear error, no panic.
    assert!(err.to_string().contains("no token"), "{err}");
    let tokens = proxy.stats().requests_to("/token").len();
    assert_eq!(tokens, 1, "{:?}", proxy.stats().log);
    let stats = proxy.stats();
    let scope = &stats.requests_to("/token")[0].path;
    assert!(scope.contains("scope=repository%3Arepo%3Apull") && scope.contains("service=clip-proxy"), "{scope}");
}

#[tokio::test]
async fn a_trickling_range_read_fails_at_the_rate_floor() {
    let setup = Setup::new(false);
    let proxy = proxy(&setup);
    let opts = strict(&setup, &proxy, Duration::from_millis(500), 24);
    let source = RegistrySource::connect(&proxy.addr(), "repo", &opts).await.unwrap();
    // 1 KiB every 50 ms = 20 KiB/s, below the 64 KiB/s floor.
    proxy.set_faults(vec![
        Fault::new(FaultKind::Trickle { bytes: 1024, every: Duration::from_millis(50) }).blobs_only()
    ]);
    let started = Instant::now();
    let err = read_middle(&setup, &source).await.unwrap_err().to_string();
    assert!(err.contains("bytes/s clip requires"), "{err}");
    assert_eq!(proxy.stats().blob_requests, 4, "the policy's attempts: {:?}", proxy.stats().log);
    // Each attempt ends at its first window (0.5 s), not when the 600 KiB would have arrived (30 s).
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_stream_that_stalls_after_every_piece_stops_after_the_total_attempts() {
    let setup = Setup::new(false);
    let proxy = proxy(&setup);
    let opts = strict(&setup, &proxy, Duration::from_millis(300), 6);
    let source = RegistrySource::connect(&proxy.addr(), "repo", &opts).await.unwrap();
    // Every answer brings 64 KiB, then nothing: each resume makes progress, which used to refill the
    // budget forever (2 MiB / 64 KiB = 32 resumes, and more for a bigger blob).
    proxy.set_faults(vec![Fault::new(FaultKind::StallAfter { after_bytes: 64 << 10 }).blobs_only()]);
    use futures::StreamExt;
    let mut stream = source.open_blob(&setup.desc).await.unwrap();
    let mut got = 0usize;
    let mut last = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => got += c.len(),
            Err(e) => last = Some(e),
        }
    }
    let err = last.expect("the stream ended without an error").to_string();
    assert!(err.contains("bytes/s clip requires"), "{err}");
    assert_eq!(proxy.stats().blob_requests, 6, "total_attempts bounds the resumes: {:?}", proxy.stats().log);
    assert!(got < setup.layer.len(), "{got}");
}

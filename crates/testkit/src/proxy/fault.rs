//! Injected faults: what a [`Fault`] rule does ([`FaultKind`]), which requests it matches, and how often
//! it fires (`times`, `probability` with a seeded RNG so runs are reproducible).
//!
//! Rules are tried in order for every request; the first one that matches and fires is applied, and only
//! that one (one fault per request). Each firing counts in [`super::ProxyStats::faults_injected`].

use std::time::Duration;

/// What an injected fault does to one request.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultKind {
    /// Answer this status (e.g. 500, 503) with a small registry-style JSON error body, without asking the
    /// upstream.
    Status(u16),
    /// Answer `429 Too Many Requests` with `Retry-After: retry_after_secs`, without asking the upstream.
    TooManyRequests {
        /// The `Retry-After` value in seconds.
        retry_after_secs: u64,
    },
    /// Forward the request, send the response head and `after_bytes` body bytes, then reset the TCP
    /// connection (RST). A shorter body is sent whole, and the connection is reset after it.
    ResetMidBody {
        /// Body bytes sent before the reset.
        after_bytes: u64,
    },
    /// Forward the request, send the response head (with the upstream's `Content-Length`, larger than what
    /// follows) and `after_bytes` body bytes, then close the connection cleanly (FIN). A shorter body is
    /// sent whole, and the connection is closed after it.
    TruncateBody {
        /// Body bytes sent before the close.
        after_bytes: u64,
    },
    /// Wait this long (on top of the configured rtt) before the first byte of the response.
    DelayFirstByte(Duration),
    /// Flip the lowest bit of the response body byte at `offset` (counted from the first body byte of
    /// this response, so for a 206 from the start of the range). No change when the body is shorter.
    FlipBit {
        /// Offset in the response body.
        offset: u64,
    },
    /// Strip the `Range` header before forwarding, so the registry answers 200 with the whole blob.
    IgnoreRange,
    /// Answer `401 Unauthorized` without asking the upstream for this request. When the upstream's
    /// `GET /v2/` challenges with `WWW-Authenticate: Bearer realm=...`, that header is copied (pointing back
    /// at its token realm); otherwise the 401 carries no challenge.
    Unauthorized,
    /// Answer `307 Temporary Redirect` with `Location: http://<to><path>` (`to` as `HOST:PORT`, e.g.
    /// another proxy in front of the same registry; the path keeps its query).
    Redirect {
        /// `HOST:PORT` to redirect to.
        to: String,
    },
    /// Read the request and never answer; the connection stays open until the client closes it or the
    /// proxy is dropped. For deadline tests.
    Blackhole,
    /// Answer `200 OK` without asking the upstream, with a chunked body that never ends (blanks, which
    /// would be valid JSON whitespace forever): sent until the client hangs up, the proxy stops, or
    /// 64 GiB / 10 minutes have gone (so the proxy stops by itself). For size-cap tests.
    EndlessBody,
    /// Answer `401 Unauthorized` without asking the upstream, challenging for a token from this proxy:
    /// `WWW-Authenticate: Bearer realm="http://<proxy>/token",service="clip-proxy"`. Pair it with a rule
    /// for `/token` (e.g. [`FaultKind::EndlessBody`]) placed before it.
    BearerChallenge,
    /// Forward the request and send the response body `bytes` at a time, one piece per `every`.
    Trickle {
        /// Bytes per piece.
        bytes: usize,
        /// The wait before each piece.
        every: Duration,
    },
    /// Forward the request, send the response head and `after_bytes` body bytes, then send nothing more
    /// while keeping the connection open (until the client hangs up or the proxy stops).
    StallAfter {
        /// Body bytes sent before the stall.
        after_bytes: u64,
    },
}

impl FaultKind {
    /// A short name for logs and request records (`"status 503"`, `"reset-mid-body"`, ...).
    pub fn name(&self) -> String {
        match self {
            FaultKind::Status(s) => format!("status {s}"),
            FaultKind::TooManyRequests { .. } => "too-many-requests".into(),
            FaultKind::ResetMidBody { .. } => "reset-mid-body".into(),
            FaultKind::TruncateBody { .. } => "truncate-body".into(),
            FaultKind::DelayFirstByte(_) => "delay-first-byte".into(),
            FaultKind::FlipBit { .. } => "flip-bit".into(),
            FaultKind::IgnoreRange => "ignore-range".into(),
            FaultKind::Unauthorized => "unauthorized".into(),
            FaultKind::Redirect { .. } => "redirect".into(),
            FaultKind::Blackhole => "blackhole".into(),
            FaultKind::EndlessBody => "endless-body".into(),
            FaultKind::BearerChallenge => "bearer-challenge".into(),
            FaultKind::Trickle { .. } => "trickle".into(),
            FaultKind::StallAfter { .. } => "stall-after".into(),
        }
    }
}

/// One fault rule: a [`FaultKind`], which requests it matches, and how often it fires.
///
/// ```
/// use clip_testkit::{Fault, FaultKind};
/// // The first two blob GETs answer 503, later ones go through.
/// let rule = Fault::new(FaultKind::Status(503)).blobs_only().times(2);
/// // Every third-or-so request whose path contains "manifests" gets a 429 (seeded, reproducible).
/// let flaky = Fault::new(FaultKind::TooManyRequests { retry_after_secs: 1 }).path_contains("manifests").probability(0.3);
/// # let _ = (rule, flaky);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    /// What happens to a request the rule fires on.
    pub kind: FaultKind,
    /// Only requests whose target (path and query) contains this.
    pub path_contains: Option<String>,
    /// Only requests whose target (path and query) is exactly this.
    pub path_is: Option<String>,
    /// Only blob downloads (`GET /v2/.../blobs/sha256:...`).
    pub blobs_only: bool,
    /// Fire on at most this many requests, then never again (`None`: no limit).
    pub times: Option<usize>,
    /// Chance that a matching request gets the fault (1.0: always), drawn from the proxy's seeded RNG.
    pub probability: f64,
}

impl Fault {
    /// A rule that fires on every request.
    pub fn new(kind: FaultKind) -> Self {
        Fault { kind, path_contains: None, path_is: None, blobs_only: false, times: None, probability: 1.0 }
    }

    /// Only on requests whose target is `target` (`"/v2/"`: the registry check).
    pub fn path_is(mut self, target: &str) -> Self {
        self.path_is = Some(target.to_owned());
        self
    }

    /// Only on requests whose target contains `needle`.
    pub fn path_contains(mut self, needle: &str) -> Self {
        self.path_contains = Some(needle.to_owned());
        self
    }

    /// Only on blob downloads (`GET /v2/.../blobs/sha256:...`).
    pub fn blobs_only(mut self) -> Self {
        self.blobs_only = true;
        self
    }

    /// At most `n` times.
    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }

    /// With this chance per matching request (clamped to 0..=1).
    pub fn probability(mut self, p: f64) -> Self {
        self.probability = p.clamp(0.0, 1.0);
        self
    }

    fn matches(&self, target: &str, is_blob: bool) -> bool {
        (!self.blobs_only || is_blob)
            && self.path_contains.as_deref().is_none_or(|n| target.contains(n))
            && self.path_is.as_deref().is_none_or(|p| target == p)
    }
}

/// The active rules with how often each fired, and the RNG for `probability`.
#[derive(Debug)]
pub(crate) struct Faults {
    rules: Vec<(Fault, usize)>,
    rng: SplitMix64,
}

impl Faults {
    pub(crate) fn new(rules: Vec<Fault>, seed: u64) -> Self {
        Faults { rules: rules.into_iter().map(|f| (f, 0)).collect(), rng: SplitMix64(seed) }
    }

    /// Replaces the rules (their `times` counts start afresh); the RNG goes on.
    pub(crate) fn set(&mut self, rules: Vec<Fault>) {
        self.rules = rules.into_iter().map(|f| (f, 0)).collect();
    }

    /// The fault for this request, if a rule fires (and counts the firing).
    pub(crate) fn pick(&mut self, target: &str, is_blob: bool) -> Option<FaultKind> {
        for (rule, fired) in &mut self.rules {
            if !rule.matches(target, is_blob) || rule.times.is_some_and(|t| *fired >= t) {
                continue;
            }
            if rule.probability < 1.0 && self.rng.next_f64() >= rule.probability {
                continue;
            }
            *fired += 1;
            return Some(rule.kind.clone());
        }
        None
    }
}

/// splitmix64: small, seeded, good enough to pick which requests fail.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOB: &str = "/v2/r/blobs/sha256:abc";

    #[test]
    fn times_limits_firings_and_matchers_filter() {
        let mut f = Faults::new(vec![Fault::new(FaultKind::Status(503)).blobs_only().times(2)], 1);
        assert_eq!(f.pick("/v2/r/manifests/t", false), None);
        assert_eq!(f.pick(BLOB, true), Some(FaultKind::Status(503)));
        assert_eq!(f.pick(BLOB, true), Some(FaultKind::Status(503)));
        assert_eq!(f.pick(BLOB, true), None);
        f.set(vec![Fault::new(FaultKind::IgnoreRange).path_contains("manifests")]);
        assert_eq!(f.pick(BLOB, true), None);
        assert_eq!(f.pick("/v2/r/manifests/t", false), Some(FaultKind::IgnoreRange));
    }

    #[test]
    fn first_firing_rule_wins() {
        let rules = vec![Fault::new(FaultKind::Status(500)).times(1), Fault::new(FaultKind::Status(502))];
        let mut f = Faults::new(rules, 1);
        assert_eq!(f.pick("/", false), Some(FaultKind::Status(500)));
        assert_eq!(f.pick("/", false), Some(FaultKind::Status(502)));
    }

    #[test]
    fn probability_is_seeded_and_roughly_right() {
        let draw = |seed| {
            let mut f = Faults::new(vec![Fault::new(FaultKind::Blackhole).probability(0.25)], seed);
            (0..4000).map(|_| f.pick("/", false).is_some()).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7), "same seed, same choices");
        assert_ne!(a, draw(8));
        let hits = a.iter().filter(|h| **h).count();
        assert!((800..1200).contains(&hits), "{hits} of 4000 at p = 0.25");
    }
}

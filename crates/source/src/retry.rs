//! [`RetryPolicy`]: which registry failures are tried again, how often and after how long.
//!
//! Retried: connection failures, resets and bodies cut short, timeouts, HTTP 408, 429 and 5xx. A
//! `Retry-After` header (seconds or an HTTP date) is honoured up to [`RetryPolicy::max_delay`]. Waits
//! grow exponentially from [`RetryPolicy::base_delay`] with jitter (half fixed, half random), so many
//! readers failing at once do not come back in lockstep. A 401 is answered by authenticating again
//! once (a cached token may have expired) and retrying at once. Everything else (404, 403, a range
//! outside the blob) fails at the first answer.
//!
//! Progress must be real progress: a response body that brings fewer than
//! [`RetryPolicy::min_rate`] bytes per second over a [`RetryPolicy::rate_window`] fails like a broken
//! connection ([`Pace`]), and a blob stream that resumes after every few bytes it gets is still bounded
//! by [`RetryPolicy::total_attempts`] failures in all. So a registry that stalls or trickles makes a
//! read fail within bounded time; callers that need a tighter deadline (the content store's per-read
//! deadline, `clip index --timeout`) put a timeout around the whole operation.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::error::SourceError;

/// How registry requests are retried. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first included (0 counts as 1). Default 6.
    pub attempts: u32,
    /// The wait before the second attempt; it doubles with every further attempt. Default 100 ms.
    pub base_delay: Duration,
    /// The longest wait between two attempts, an honoured `Retry-After` included. Default 8 s.
    pub max_delay: Duration,
    /// Failed attempts in all for one request or blob stream. A blob stream that broke off after
    /// bringing bytes resumes with a fresh budget of [`RetryPolicy::attempts`], but never past this
    /// many failures, so a registry that trickles a little before every failure cannot keep a read
    /// going forever. Default 24.
    pub total_attempts: u32,
    /// Slowest acceptable body: fewer bytes than `min_rate` × [`RetryPolicy::rate_window`] in one
    /// window fails the attempt. Default 1 KiB/s.
    pub min_rate: u64,
    /// The window [`RetryPolicy::min_rate`] is measured over. Default 30 s.
    pub rate_window: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(8),
            total_attempts: 24,
            min_rate: 1024,
            rate_window: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retries.
    pub const NEVER: RetryPolicy = RetryPolicy {
        attempts: 1,
        base_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
        total_attempts: 1,
        min_rate: 1024,
        rate_window: Duration::from_secs(30),
    };

    /// The wait after `failed` attempts (1 after the first failure) before the next one, given the
    /// server's `Retry-After`: exponential backoff with jitter, at least `retry_after`, at most
    /// [`RetryPolicy::max_delay`].
    pub fn delay(&self, failed: u32, retry_after: Option<Duration>) -> Duration {
        let shift = failed.saturating_sub(1).min(20);
        let cap = self.base_delay.saturating_mul(1 << shift).min(self.max_delay);
        let half = cap / 2;
        let jittered = half + half.mul_f64(fastrand::f64());
        match retry_after {
            Some(after) => after.min(self.max_delay).max(jittered),
            None => jittered,
        }
    }

    /// Whether another attempt may follow `failed` failed ones.
    pub(crate) fn allows(&self, failed: u32) -> bool {
        failed < self.attempts.max(1)
    }

    /// Whether another attempt may follow, given all failures of a request so far.
    pub(crate) fn allows_tries(&self, tries: &Tries) -> bool {
        self.allows(tries.failed) && tries.total < self.total_attempts.max(1)
    }
}

/// Attempts of one request (or blob stream) so far.
#[derive(Debug, Default)]
pub(crate) struct Tries {
    /// Failures since the last progress.
    pub failed: u32,
    /// Failures in all.
    pub total: u32,
    /// Whether a 401 made us authenticate again already.
    pub reauthenticated: bool,
}

impl Tries {
    /// Counts a failure.
    pub(crate) fn fail(&mut self) {
        self.failed += 1;
        self.total += 1;
    }

    /// Bytes arrived since the last failure: the next failures start a fresh budget of
    /// [`RetryPolicy::attempts`] (the total still counts).
    pub(crate) fn progressed(&mut self) {
        self.failed = 0;
    }
}

/// The rate floor of one response body (see the module docs): counts bytes per window of
/// [`RetryPolicy::rate_window`] and fails a window that brought fewer than [`RetryPolicy::min_rate`]
/// bytes per second. Read a body with [`Pace::next`], which also ends a window in which nothing came.
#[derive(Debug)]
pub(crate) struct Pace {
    window_end: Instant,
    bytes: u64,
    floor: u64,
    window: Duration,
}

impl Pace {
    pub(crate) fn new(policy: &RetryPolicy) -> Pace {
        let window = policy.rate_window.max(Duration::from_millis(1));
        let floor = policy.min_rate.saturating_mul(window.as_millis() as u64) / 1000;
        Pace { window_end: Instant::now() + window, bytes: 0, floor, window }
    }

    /// Counts `n` bytes that arrived; `Err(detail)` if a window closed with too few.
    pub(crate) fn add(&mut self, n: usize) -> Result<(), String> {
        self.bytes += n as u64;
        if Instant::now() >= self.window_end {
            self.roll()?;
        }
        Ok(())
    }

    /// Closes the current window: `Err(detail)` if it brought too few bytes, else starts the next.
    fn roll(&mut self) -> Result<(), String> {
        if self.bytes < self.floor {
            return Err(format!(
                "only {} bytes arrived in {} s, less than the {} bytes/s clip requires (a stalled or \
                 trickling connection)",
                self.bytes,
                self.window.as_secs_f64(),
                self.floor * 1000 / (self.window.as_millis().max(1) as u64)
            ));
        }
        self.bytes = 0;
        self.window_end = Instant::now() + self.window;
        Ok(())
    }

    /// The next item of `stream`, ending windows that pass while waiting for it.
    pub(crate) async fn next<S: futures::Stream + Unpin>(&mut self, stream: &mut S) -> Result<Option<S::Item>, String> {
        use futures::StreamExt;
        loop {
            match tokio::time::timeout_at(self.window_end, stream.next()).await {
                Ok(item) => return Ok(item),
                Err(_) => self.roll()?,
            }
        }
    }
}

/// What to do about a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Try again after the backoff (and at least this long, if the server said so).
    Retry(Option<Duration>),
    /// Authenticate again (the token may have expired), then try again at once; only once per request.
    Reauthenticate,
    /// Give up: trying again cannot help.
    Fail,
}

/// A failed attempt: the error to report if it is the last, and what to do about it.
#[derive(Debug)]
pub(crate) struct Failed {
    pub error: SourceError,
    pub verdict: Verdict,
}

impl Failed {
    pub fn retry(error: SourceError) -> Failed {
        Failed { error, verdict: Verdict::Retry(None) }
    }

    pub fn fail(error: SourceError) -> Failed {
        Failed { error, verdict: Verdict::Fail }
    }
}

/// The verdict for an HTTP status that is not a success.
pub(crate) fn verdict_for_status(status: u16, retry_after: Option<Duration>) -> Verdict {
    match status {
        401 => Verdict::Reauthenticate,
        408 | 429 | 500..=599 => Verdict::Retry(retry_after),
        _ => Verdict::Fail,
    }
}

/// Parses a `Retry-After` value: delay seconds, or an HTTP date (IMF-fixdate) from which the wait is
/// computed against `now`. Unparsable values are ignored.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = parse_http_date(value)?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` → a time.
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let mut parts = s.split_whitespace();
    let _weekday = parts.next()?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month_name = parts.next()?;
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .iter()
        .position(|m| *m == month_name)? as u64
        + 1;
    let year: u64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT"
        || !(1..=31).contains(&day)
        || !(1970..=9999).contains(&year)
        || h > 23
        || m > 59
        || sec > 60
    {
        return None;
    }
    // Days since the epoch (civil-from-days inverse, Howard Hinnant's algorithm).
    let (y, mo) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(days * 86_400 + h * 3600 + m * 60 + sec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_honours_retry_after() {
        let p = RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        for _ in 0..100 {
            let d1 = p.delay(1, None);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100), "{d1:?}");
            let d3 = p.delay(3, None);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400), "{d3:?}");
            assert!(p.delay(30, None) <= Duration::from_secs(1));
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| p.delay(2, None)).collect();
        assert!(spread.len() > 10, "no jitter: {spread:?}");
        assert_eq!(p.delay(1, Some(Duration::from_millis(700))), Duration::from_millis(700));
        assert_eq!(p.delay(1, Some(Duration::from_secs(3600))), Duration::from_secs(1), "capped");
        assert!(p.allows(4) && !p.allows(5));
        assert!(!RetryPolicy::NEVER.allows(1));
    }

    #[test]
    fn total_attempts_bound_a_stream_that_keeps_progressing() {
        let p = RetryPolicy { attempts: 3, total_attempts: 5, ..RetryPolicy::default() };
        let mut tries = Tries::default();
        let mut allowed = 0;
        while p.allows_tries(&tries) {
            tries.fail();
            tries.progressed();
            allowed += 1;
            assert!(allowed < 100, "unbounded");
        }
        assert_eq!(allowed, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn pace_fails_a_stalled_or_trickling_body() {
        let p = RetryPolicy { min_rate: 100, rate_window: Duration::from_secs(10), ..RetryPolicy::default() };
        // Nothing ever comes: the first window fails.
        let mut pace = Pace::new(&p);
        let mut stalled = futures::stream::pending::<u8>();
        let err = pace.next(&mut stalled).await.unwrap_err();
        assert!(err.contains("only 0 bytes arrived in 10 s"), "{err}");
        // 999 bytes per 10 s window is below 100 B/s: fails at the window's end.
        let mut pace = Pace::new(&p);
        tokio::time::advance(Duration::from_secs(9)).await;
        pace.add(999).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(pace.add(0).is_err());
        // Enough bytes: windows roll on.
        let mut pace = Pace::new(&p);
        for _ in 0..10 {
            pace.add(1000).unwrap();
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        pace.add(1000).unwrap();
    }

    #[test]
    fn statuses() {
        assert_eq!(verdict_for_status(503, None), Verdict::Retry(None));
        assert_eq!(verdict_for_status(429, Some(Duration::from_secs(2))), Verdict::Retry(Some(Duration::from_secs(2))));
        assert_eq!(verdict_for_status(401, None), Verdict::Reauthenticate);
        for s in [400, 403, 404, 416] {
            assert_eq!(verdict_for_status(s, None), Verdict::Fail, "{s}");
        }
    }

    #[test]
    fn retry_after_values() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Thu, 29 Feb 2024 00:00:00 GMT", SystemTime::UNIX_EPOCH),
            Some(Duration::from_secs(1_709_164_800))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("Sun, 06 Foo 1994 08:49:47 GMT", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
        // A hostile year must not overflow the time arithmetic.
        assert_eq!(parse_retry_after("Sun, 06 Nov 300000000000 08:49:47 GMT", now), None);
        assert_eq!(parse_retry_after("Sun, 06 Nov 18446744073709551615 08:49:47 GMT", now), None);
    }
}

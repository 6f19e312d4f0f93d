//! [`FsStats`]: lock-free counters of what a mount answered, for logs, tests and the CLI's Prometheus
//! endpoint. Clone the `Arc` from [`crate::ClipFs::stats`] before mounting and read a
//! [`FsStatsSnapshot`] whenever needed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The FUSE operations that are counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Lookup,
    Getattr,
    Readlink,
    Opendir,
    /// Plain `READDIR`: names and types only.
    Readdir,
    /// `READDIRPLUS`: names with attributes (the kernel builds an inode for each).
    Readdirplus,
    Open,
    Read,
    Release,
    Getxattr,
    Listxattr,
    Statfs,
    Access,
    /// Any operation that would modify the image (answered `EROFS`).
    Write,
}

impl Op {
    /// Every operation, in a fixed order.
    pub const ALL: [Op; 14] = [
        Op::Lookup,
        Op::Getattr,
        Op::Readlink,
        Op::Opendir,
        Op::Readdir,
        Op::Readdirplus,
        Op::Open,
        Op::Read,
        Op::Release,
        Op::Getxattr,
        Op::Listxattr,
        Op::Statfs,
        Op::Access,
        Op::Write,
    ];

    /// A lowercase name for labels (`lookup`, `read`, …).
    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Readlink => "readlink",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Readdirplus => "readdirplus",
            Op::Open => "open",
            Op::Read => "read",
            Op::Release => "release",
            Op::Getxattr => "getxattr",
            Op::Listxattr => "listxattr",
            Op::Statfs => "statfs",
            Op::Access => "access",
            Op::Write => "write",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Default)]
struct OpCounter {
    count: AtomicU64,
    latency_ns: AtomicU64,
}

/// Counters of one mount. All methods are cheap and thread-safe.
#[derive(Debug, Default)]
pub struct FsStats {
    ops: [OpCounter; Op::ALL.len()],
    read_bytes: AtomicU64,
    read_errors: AtomicU64,
    passthrough_opens: AtomicU64,
    erofs: AtomicU64,
    cancelled_reads: AtomicU64,
    names_only_batches: AtomicU64,
    passthrough_granted: AtomicBool,
    open_inodes: AtomicU64,
}

/// Count and summed latency of one operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpSnapshot {
    pub count: u64,
    /// Sum of the time from request to reply over all `count` requests.
    pub latency: Duration,
}

/// A copy of all counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsStatsSnapshot {
    /// One entry per [`Op::ALL`], in that order.
    pub ops: Vec<(Op, OpSnapshot)>,
    /// File bytes returned by `read` (passthrough reads never reach userspace and are not counted).
    pub read_bytes: u64,
    /// Reads answered `EIO` because the content store failed (fetch, decode or verification).
    pub read_errors: u64,
    /// Opens handed to the kernel as passthrough of a local file.
    pub passthrough_opens: u64,
    /// Requests answered `EROFS`.
    pub erofs: u64,
    /// Reads cancelled before they finished (interrupt or unmount).
    pub cancelled_reads: u64,
    /// READDIRPLUS batches answered with names only (no inode built per entry), of
    /// `op(Op::Readdirplus).count`.
    pub names_only_batches: u64,
    /// Whether the kernel granted FUSE passthrough at init.
    pub passthrough_granted: bool,
    /// Inodes with at least one open handle now: the per-inode state the mount keeps, released at the
    /// last close (so it returns to 0 when nothing is open, however many files were opened before).
    pub open_inodes: u64,
}

impl FsStatsSnapshot {
    /// The counters of `op`.
    pub fn op(&self, op: Op) -> OpSnapshot {
        self.ops.iter().find(|(o, _)| *o == op).map(|(_, s)| *s).unwrap_or_default()
    }
}

impl FsStats {
    /// All counters now.
    pub fn snapshot(&self) -> FsStatsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FsStatsSnapshot {
            ops: Op::ALL
                .iter()
                .map(|&op| {
                    let c = &self.ops[op.index()];
                    (op, OpSnapshot { count: load(&c.count), latency: Duration::from_nanos(load(&c.latency_ns)) })
                })
                .collect(),
            read_bytes: load(&self.read_bytes),
            read_errors: load(&self.read_errors),
            passthrough_opens: load(&self.passthrough_opens),
            erofs: load(&self.erofs),
            cancelled_reads: load(&self.cancelled_reads),
            names_only_batches: load(&self.names_only_batches),
            passthrough_granted: self.passthrough_granted.load(Ordering::Relaxed),
            open_inodes: load(&self.open_inodes),
        }
    }

    /// Counters of one operation now.
    pub fn op(&self, op: Op) -> OpSnapshot {
        let c = &self.ops[op.index()];
        OpSnapshot {
            count: c.count.load(Ordering::Relaxed),
            latency: Duration::from_nanos(c.latency_ns.load(Ordering::Relaxed)),
        }
    }

    /// Counts one `op` that started at `start` and was just answered.
    pub(crate) fn record(&self, op: Op, start: Instant) {
        self.ops[op.index()].count.fetch_add(1, Ordering::Relaxed);
        self.add_latency(op, start);
    }

    /// Counts `op` now and returns a guard that adds its latency when dropped (at the end of a handler,
    /// whichever way it returns). Counting first means a request is counted before its reply is sent.
    pub(crate) fn timed(&self, op: Op) -> Timed<'_> {
        self.ops[op.index()].count.fetch_add(1, Ordering::Relaxed);
        Timed { stats: self, op, start: Instant::now() }
    }

    fn add_latency(&self, op: Op, start: Instant) {
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.ops[op.index()].latency_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub(crate) fn add_read_bytes(&self, n: usize) {
        self.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn read_error(&self) {
        self.read_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn passthrough_open(&self) {
        self.passthrough_opens.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn erofs(&self) {
        self.erofs.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn cancelled_reads(&self, n: usize) {
        self.cancelled_reads.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn names_only_batch(&self) {
        self.names_only_batches.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_passthrough_granted(&self, granted: bool) {
        self.passthrough_granted.store(granted, Ordering::Relaxed);
    }

    /// Sets the number of inodes with open handles (the size of the open table, kept under its lock).
    pub(crate) fn set_open_inodes(&self, n: usize) {
        self.open_inodes.store(n as u64, Ordering::Relaxed);
    }
}

/// Records an operation's count and latency on drop.
pub(crate) struct Timed<'a> {
    stats: &'a FsStats,
    op: Op,
    start: Instant,
}

impl Drop for Timed<'_> {
    fn drop(&mut self) {
        self.stats.add_latency(self.op, self.start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_counted_separately_with_latency() {
        let stats = FsStats::default();
        {
            let _t = stats.timed(Op::Lookup);
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(stats.timed(Op::Lookup));
        stats.record(Op::Read, Instant::now());
        stats.add_read_bytes(10);
        stats.erofs();
        let s = stats.snapshot();
        assert_eq!(s.op(Op::Lookup).count, 2);
        assert!(s.op(Op::Lookup).latency >= Duration::from_millis(2));
        assert_eq!(s.op(Op::Read).count, 1);
        assert_eq!(s.op(Op::Getattr), OpSnapshot::default());
        assert_eq!((s.read_bytes, s.erofs, s.read_errors), (10, 1, 0));
        assert_eq!(s.ops.len(), Op::ALL.len());
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(op.index(), i, "Op::ALL must follow declaration order");
        }
    }
}

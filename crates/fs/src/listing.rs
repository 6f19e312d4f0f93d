//! Which READDIRPLUS batches get full entries (attributes: the kernel builds an inode and a dentry for
//! each) and which names only (node id 0: listed like a plain READDIR entry, a later `stat` is a LOOKUP).
//!
//! Full entries make `find -printf %s` or `ls -l` of a large tree cost no LOOKUP per file; names only make
//! `find | wc -l` cost no inode per file. Which one a walk needs shows in what the walking process does
//! next, so the choice is made per process (the pid of the request):
//! - The first batch of a directory is always full (a small directory is one batch; `ls -l` of it needs
//!   the attributes), as the kernel's own `READDIRPLUS_AUTO` does.
//! - A later batch is names only until the process looks up non-directories it was given names only for
//!   ([`STATS_SEEN`] of them): it stats what it lists, and its later batches are full.
//! - A process answered full gets one batch in [`PROBE_EVERY`] names only; if it looks up fewer than
//!   [`STATS_SEEN`] of those names by its next probe, it has stopped statting and goes back to names only.
//!
//! Looking up a directory says nothing (a walk that only lists names still opens each subdirectory by name).

use std::collections::HashMap;
use std::sync::Mutex;

/// LOOKUPs of non-directories, among names a process was given names only, that show it stats what it lists.
pub(crate) const STATS_SEEN: u32 = 2;
/// One later batch in this many, for a process answered full, goes names only to see whether it still stats.
pub(crate) const PROBE_EVERY: u32 = 32;
/// Processes remembered; past it the table starts over (each process then starts again as names only).
const MAX_CALLERS: usize = 1024;
/// Directories per process whose names-only entries a LOOKUP is matched against.
const RECENT: usize = 4;

/// How one READDIRPLUS batch is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entries {
    Full,
    NamesOnly,
}

/// What is known of one process's walk.
#[derive(Debug, Default)]
struct Caller {
    /// It stats what it lists: later batches are full.
    stats: bool,
    /// Directories it was last given names-only entries for, newest first (0: none).
    recent: [u64; RECENT],
    /// LOOKUPs of non-directories in `recent` since the last switch or probe.
    lookups: u32,
    /// Later batches answered since the last probe, while `stats`.
    since_probe: u32,
    /// A probe was answered and its lookups are being counted.
    probing: bool,
}

/// The choice for every process of one mount. Cheap: one uncontended lock per LOOKUP and READDIRPLUS.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    callers: Mutex<HashMap<u32, Caller>>,
}

impl Listing {
    /// How to answer process `pid`'s READDIRPLUS of directory `dir` from `offset` (0: the first batch).
    pub(crate) fn batch(&self, pid: u32, dir: u64, offset: u64) -> Entries {
        if offset == 0 {
            return Entries::Full;
        }
        let mut callers = self.callers.lock().unwrap_or_else(|e| e.into_inner());
        if callers.len() >= MAX_CALLERS && !callers.contains_key(&pid) {
            callers.clear();
        }
        let c = callers.entry(pid).or_default();
        if c.stats {
            c.since_probe += 1;
            if c.since_probe < PROBE_EVERY {
                return Entries::Full;
            }
            // A probe: keep answering full unless the names of the last probe were not looked up.
            c.since_probe = 0;
            c.stats = !c.probing || c.lookups >= STATS_SEEN;
            c.probing = c.stats;
            c.lookups = 0;
        }
        if !c.recent.contains(&dir) {
            c.recent.rotate_right(1);
            c.recent[0] = dir;
        }
        Entries::NamesOnly
    }

    /// Process `pid` looked up a name in directory `parent`; `is_dir` when the name is a directory.
    pub(crate) fn looked_up(&self, pid: u32, parent: u64, is_dir: bool) {
        if is_dir {
            return;
        }
        let mut callers = self.callers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = callers.get_mut(&pid) else { return };
        if !c.recent.contains(&parent) {
            return;
        }
        c.lookups = c.lookups.saturating_add(1);
        if !c.stats && c.lookups >= STATS_SEEN {
            c.stats = true;
            c.lookups = 0;
            c.since_probe = 0;
            c.probing = false;
        }
    }

    /// Process `pid` is answered full entries for later batches.
    #[cfg(test)]
    fn stats(&self, pid: u32) -> bool {
        self.callers.lock().unwrap().get(&pid).is_some_and(|c| c.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: u64 = 7;

    #[test]
    fn a_first_batch_is_full_and_later_batches_are_names_only_for_a_walk_that_does_not_stat() {
        let l = Listing::default();
        assert_eq!(l.batch(1, DIR, 0), Entries::Full);
        for offset in [100, 200, 300] {
            assert_eq!(l.batch(1, DIR, offset), Entries::NamesOnly);
        }
        // Opening subdirectories by name is not statting.
        for _ in 0..10 {
            l.looked_up(1, DIR, true);
        }
        assert_eq!(l.batch(1, DIR, 400), Entries::NamesOnly);
    }

    #[test]
    fn lookups_of_names_given_names_only_switch_that_process_to_full_and_no_other() {
        let l = Listing::default();
        assert_eq!(l.batch(1, DIR, 100), Entries::NamesOnly);
        // Another process's lookups, or lookups in a directory not listed names only, do not count.
        l.looked_up(2, DIR, false);
        l.looked_up(2, DIR, false);
        l.looked_up(1, DIR + 1, false);
        l.looked_up(1, DIR + 1, false);
        assert!(!l.stats(1));
        for _ in 0..STATS_SEEN {
            l.looked_up(1, DIR, false);
        }
        assert!(l.stats(1));
        assert_eq!(l.batch(1, DIR + 2, 100), Entries::Full);
        assert_eq!(l.batch(2, DIR + 2, 100), Entries::NamesOnly);
    }

    #[test]
    fn a_process_that_stops_statting_goes_back_to_names_only_at_its_next_probe() {
        let l = Listing::default();
        l.batch(1, DIR, 100);
        for _ in 0..STATS_SEEN {
            l.looked_up(1, DIR, false);
        }
        // Still statting: each probe's names are looked up, and it stays full.
        for round in 0..3u64 {
            let dir = 100 + round;
            let answers: Vec<Entries> = (1..=PROBE_EVERY).map(|k| l.batch(1, dir, u64::from(k))).collect();
            assert_eq!(answers.iter().filter(|&&e| e == Entries::NamesOnly).count(), 1, "one probe per round");
            assert_eq!(answers.last(), Some(&Entries::NamesOnly));
            for _ in 0..STATS_SEEN {
                l.looked_up(1, dir, false);
            }
            assert!(l.stats(1));
        }
        // It stops: the probe it is given is not looked up, and the next probe turns it to names only.
        let answers: Vec<Entries> = (1..=PROBE_EVERY).map(|k| l.batch(1, 200, u64::from(k))).collect();
        assert_eq!(answers.last(), Some(&Entries::NamesOnly));
        assert!(l.stats(1));
        let answers: Vec<Entries> = (1..=PROBE_EVERY).map(|k| l.batch(1, 201, u64::from(k))).collect();
        assert_eq!(answers.last(), Some(&Entries::NamesOnly));
        assert!(!l.stats(1));
        assert_eq!(l.batch(1, 200, 1000), Entries::NamesOnly);
    }

    #[test]
    fn the_table_of_processes_stays_bounded() {
        let l = Listing::default();
        for pid in 0..(3 * MAX_CALLERS as u32) {
            l.batch(pid, DIR, 100);
        }
        assert!(l.callers.lock().unwrap().len() <= MAX_CALLERS);
    }
}

//! Which READDIRPLUS batches get full entries (attributes: the kernel builds an inode and a dentry for
//! each) and which names only (node id 0: listed like a plain READDIR entry, a later `stat` is a LOOKUP).
//!
//! Full entries make `find -printf %s` or `ls -l` of a large tree cost no LOOKUP per file; names only make
//! `find | wc -l` cost no inode per file. Which one a walk needs shows in what the walking process does
//! with names it was given names only, so the choice is made per process (the pid of the request):
//! - The first batch of a directory is always full (a small directory is one batch).
//! - A process starts full. One later batch in [`PROBE_EVERY`] (its first later batch, to begin with) is a
//!   probe: names only. When the process goes on to list another directory without having looked up
//!   [`STATS_SEEN`] non-directories of the probe, it does not stat what it lists, and its later batches
//!   are names only. (Judged at the next directory, not at once: `ls -l` lists a whole directory first and
//!   stats it after.)
//! - A process answered names only that looks up [`STATS_SEEN`] non-directories it was given names only
//!   stats what it lists: full again.
//!
//! Looking up a directory says nothing (a walk that only lists names still opens each subdirectory by name).

use std::collections::HashMap;
use std::sync::Mutex;

/// LOOKUPs of non-directories, among names a process was given names only, that show it stats what it lists.
pub(crate) const STATS_SEEN: u32 = 2;
/// One later batch in this many, for a process answered full, is a names-only probe.
pub(crate) const PROBE_EVERY: u32 = 32;
/// Processes remembered; past it the table starts over (each process then starts again, full).
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
#[derive(Debug)]
struct Caller {
    /// It stats what it lists (or has not shown otherwise yet): later batches are full.
    stats: bool,
    /// The directory it listed last.
    dir: u64,
    /// Directories it was last given names-only entries for, newest first (0: none).
    recent: [u64; RECENT],
    /// LOOKUPs of non-directories in `recent` since the last switch or probe.
    lookups: u32,
    /// Later batches answered full since the last probe.
    since_probe: u32,
    /// A probe was answered and not judged yet.
    probing: bool,
}

impl Default for Caller {
    fn default() -> Caller {
        Caller { stats: true, dir: 0, recent: [0; RECENT], lookups: 0, since_probe: PROBE_EVERY, probing: false }
    }
}

impl Caller {
    fn names_only(&mut self, dir: u64) -> Entries {
        if !self.recent.contains(&dir) {
            self.recent.rotate_right(1);
            self.recent[0] = dir;
        }
        Entries::NamesOnly
    }
}

/// The choice for every process of one mount. Cheap: one uncontended lock per LOOKUP and READDIRPLUS.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    callers: Mutex<HashMap<u32, Caller>>,
}

impl Listing {
    /// How to answer process `pid`'s READDIRPLUS of directory `dir` from `offset` (0: the first batch).
    pub(crate) fn batch(&self, pid: u32, dir: u64, offset: u64) -> Entries {
        let mut callers = self.callers.lock().unwrap_or_else(|e| e.into_inner());
        if callers.len() >= MAX_CALLERS && !callers.contains_key(&pid) {
            callers.clear();
        }
        let c = callers.entry(pid).or_default();
        if dir != c.dir {
            // On to another directory: judge the probe.
            c.dir = dir;
            if std::mem::take(&mut c.probing) && c.lookups < STATS_SEEN {
                c.stats = false;
            }
        }
        if offset == 0 {
            return Entries::Full;
        }
        if !c.stats {
            return c.names_only(dir);
        }
        if c.probing || c.since_probe < PROBE_EVERY {
            c.since_probe = c.since_probe.saturating_add(1);
            return Entries::Full;
        }
        c.since_probe = 0;
        c.probing = true;
        c.lookups = 0;
        c.names_only(dir)
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
        }
    }

    /// Process `pid` is answered full entries for later batches.
    #[cfg(test)]
    fn stats(&self, pid: u32) -> bool {
        self.callers.lock().unwrap().get(&pid).is_none_or(|c| c.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: u64 = 7;

    /// The answers to `pid` listing `dir` in `batches` batches.
    fn list(l: &Listing, pid: u32, dir: u64, batches: u64) -> Vec<Entries> {
        (0..batches).map(|b| l.batch(pid, dir, b * 100)).collect()
    }

    fn names_only(answers: &[Entries]) -> usize {
        answers.iter().filter(|&&e| e == Entries::NamesOnly).count()
    }

    #[test]
    fn a_walk_that_does_not_stat_gets_names_only_after_its_first_directory() {
        let l = Listing::default();
        let first = list(&l, 1, DIR, 10);
        assert_eq!(first[0], Entries::Full);
        assert_eq!(names_only(&first), 1, "one probe in the first directory: {first:?}");
        // Opening subdirectories by name is not statting.
        for _ in 0..10 {
            l.looked_up(1, DIR, true);
        }
        let second = list(&l, 1, DIR + 1, 10);
        assert_eq!(second[0], Entries::Full, "a first batch is always full");
        assert_eq!(names_only(&second), 9);
        assert!(!l.stats(1));
    }

    #[test]
    fn a_process_that_lists_a_whole_directory_before_statting_it_stays_full() {
        // `ls -l`: every batch, then a stat of every name (the probe's names among them).
        let l = Listing::default();
        let answers = list(&l, 1, DIR, 500);
        assert_eq!(names_only(&answers), 1, "one probe while the listing runs");
        for _ in 0..100 {
            l.looked_up(1, DIR, false);
        }
        assert!(l.stats(1));
        assert_eq!(names_only(&list(&l, 1, DIR + 1, 10)), 1, "the next directory has its probe, no more");
    }

    #[test]
    fn lookups_of_names_given_names_only_switch_that_process_to_full_and_no_other() {
        let l = Listing::default();
        for pid in [1, 2] {
            list(&l, pid, DIR, 5);
            list(&l, pid, DIR + 1, 5);
            assert!(!l.stats(pid));
        }
        // Another process's lookups, or lookups in a directory not listed names only, do not count.
        l.looked_up(2, DIR + 1, false);
        l.looked_up(2, DIR + 1, false);
        l.looked_up(1, DIR + 5, false);
        l.looked_up(1, DIR + 5, false);
        assert!(!l.stats(1));
        for _ in 0..STATS_SEEN {
            l.looked_up(1, DIR + 1, false);
        }
        assert!(l.stats(1));
        assert_eq!(l.batch(1, DIR + 2, 100), Entries::Full);
        assert_eq!(l.batch(3, DIR + 2, 100), Entries::NamesOnly, "a new process's first later batch is a probe");
    }

    #[test]
    fn a_process_that_stops_statting_goes_back_to_names_only_after_a_probe() {
        let l = Listing::default();
        // It stats: each probe's names are looked up, and it stays full.
        for round in 0..3u64 {
            let dir = 100 + round;
            let answers = list(&l, 1, dir, u64::from(PROBE_EVERY) + 2);
            assert_eq!(names_only(&answers), 1, "one probe per {PROBE_EVERY} later batches: {answers:?}");
            for _ in 0..STATS_SEEN {
                l.looked_up(1, dir, false);
            }
            assert!(l.stats(1));
        }
        // It stops: its next probe is not looked up, and the directory after it is names only.
        let answers = list(&l, 1, 200, u64::from(PROBE_EVERY) + 2);
        assert_eq!(names_only(&answers), 1);
        assert!(l.stats(1), "judged only at the next directory");
        assert_eq!(names_only(&list(&l, 1, 201, 5)), 4);
        assert!(!l.stats(1));
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

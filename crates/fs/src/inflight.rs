//! Reads in flight: each `read` the session thread cannot answer at once runs as a tokio task, keyed by the
//! request's unique id, so it can be cancelled — answered with an error and its task aborted — while the
//! session thread goes on serving other requests.
//!
//! Whoever takes a read's reply first answers it: the task when it finishes, or [`InFlight::cancel`]. fuser
//! 0.18 does not pass `FUSE_INTERRUPT` to the filesystem (it answers `ENOSYS`, after which the kernel stops
//! sending interrupts), so today `cancel` runs when the filesystem is destroyed; once fuser delivers
//! interrupts, the handler is `cancel(unique, EINTR)`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use fuser::{Errno, ReplyData};
use tokio::runtime::Handle;
use tokio::task::AbortHandle;

/// What a read is answered with; implemented by fuser's [`ReplyData`] (and a fake in the tests).
pub(crate) trait DataReply: Send + 'static {
    fn data(self, bytes: &[u8]);
    fn error(self, errno: Errno);
}

impl DataReply for ReplyData {
    fn data(self, bytes: &[u8]) {
        ReplyData::data(self, bytes);
    }

    fn error(self, errno: Errno) {
        ReplyData::error(self, errno);
    }
}

/// A reply that exactly one of the task and a canceller will take.
struct Slot<R>(Mutex<Option<R>>);

impl<R> Slot<R> {
    fn take(&self) -> Option<R> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

struct Entry<R> {
    slot: Arc<Slot<R>>,
    task: AbortHandle,
}

/// The reads in flight of one mount.
pub(crate) struct InFlight<R> {
    reads: Mutex<HashMap<u64, Entry<R>>>,
}

impl<R: DataReply> InFlight<R> {
    pub(crate) fn new() -> InFlight<R> {
        InFlight { reads: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry<R>>> {
        self.reads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `read` on `runtime` as request `unique` and answers `reply` with its result, unless the read is
    /// cancelled first.
    pub(crate) fn spawn<F>(self: &Arc<Self>, runtime: &Handle, unique: u64, reply: R, read: F)
    where
        F: Future<Output = Result<Vec<u8>, Errno>> + Send + 'static,
    {
        let slot = Arc::new(Slot(Mutex::new(Some(reply))));
        let this = Arc::clone(self);
        let task_slot = Arc::clone(&slot);
        // Hold the map while spawning: the task's own removal waits until its entry is in.
        let mut reads = self.lock();
        let task = runtime.spawn(async move {
            let result = read.await;
            this.lock().remove(&unique);
            if let Some(reply) = task_slot.take() {
                match result {
                    Ok(bytes) => reply.data(&bytes),
                    Err(errno) => reply.error(errno),
                }
            }
        });
        reads.insert(unique, Entry { slot, task: task.abort_handle() });
    }

    /// Answers read `unique` with `errno` and aborts its task; false when it is no longer in flight.
    pub(crate) fn cancel(&self, unique: u64, errno: Errno) -> bool {
        let Some(entry) = self.lock().remove(&unique) else { return false };
        entry.task.abort();
        match entry.slot.take() {
            Some(reply) => {
                reply.error(errno);
                true
            }
            None => false,
        }
    }

    /// Cancels every read in flight with `errno`; returns how many were cancelled.
    pub(crate) fn cancel_all(&self, errno: Errno) -> usize {
        let ids: Vec<u64> = self.lock().keys().copied().collect();
        ids.into_iter().filter(|&id| self.cancel(id, errno)).count()
    }

    /// Number of reads in flight.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    struct FakeReply(mpsc::Sender<Result<Vec<u8>, i32>>);

    impl DataReply for FakeReply {
        fn data(self, bytes: &[u8]) {
            let _ = self.0.send(Ok(bytes.to_vec()));
        }
        fn error(self, errno: Errno) {
            let _ = self.0.send(Err(errno.code()));
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap()
    }

    #[test]
    fn a_finished_read_answers_with_its_bytes_and_leaves_the_table() {
        let rt = runtime();
        let inflight = Arc::new(InFlight::new());
        let (tx, rx) = mpsc::channel();
        inflight.spawn(rt.handle(), 7, FakeReply(tx), async { Ok(b"abc".to_vec()) });
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), Ok(b"abc".to_vec()));
        assert_eq!(inflight.len(), 0);
        assert!(!inflight.cancel(7, Errno::EINTR), "a finished read cannot be cancelled");
    }

    /// Says when it is dropped: an aborted task's future is dropped without running on.
    struct OnDrop(mpsc::Sender<()>);

    impl Drop for OnDrop {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }

    #[test]
    fn a_cancelled_read_answers_eintr_once_and_its_task_is_aborted() {
        let rt = runtime();
        let inflight = Arc::new(InFlight::new());
        let (tx, rx) = mpsc::channel();
        let (dropped_tx, dropped) = mpsc::channel();
        let guard = OnDrop(dropped_tx);
        inflight.spawn(rt.handle(), 9, FakeReply(tx), async move {
            let _guard = guard;
            // Never finishes by itself: only an abort drops it.
            std::future::pending::<()>().await;
            Ok(b"never".to_vec())
        });
        assert_eq!(inflight.len(), 1);
        assert!(inflight.cancel(9, Errno::EINTR));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), Err(libc::EINTR));
        dropped.recv_timeout(Duration::from_secs(5)).expect("the cancelled read's task was not aborted");
        assert!(rx.try_recv().is_err(), "exactly one answer");
        assert_eq!(inflight.len(), 0);
    }

    #[test]
    fn cancel_all_answers_every_pending_read() {
        let rt = runtime();
        let inflight = Arc::new(InFlight::new());
        let (tx, rx) = mpsc::channel();
        for id in 0..3 {
            inflight.spawn(rt.handle(), id, FakeReply(tx.clone()), async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(Vec::new())
            });
        }
        assert_eq!(inflight.cancel_all(Errno::EIO), 3);
        for _ in 0..3 {
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), Err(libc::EIO));
        }
    }
}

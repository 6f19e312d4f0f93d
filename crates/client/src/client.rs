//! A mount asked of the daemon and held until it ends: blocking I/O on the socket, no runtime.

use std::io::{BufRead, BufReader, Read, Take, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::signal::{SigSet, Signal};

use crate::protocol::{to_line, MountRequest, Reply};

/// Most bytes a client reads from the daemon over one mount: its replies are a few hundred.
const MAX_REPLY_BYTES: u64 = 1 << 20;

/// What went wrong asking the daemon for a mount.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the mount daemon at {}: {error}{}", socket.display(), what_to_do(socket, error))]
    Unreachable { socket: PathBuf, error: std::io::Error },
    /// The daemon broke the protocol or went away.
    #[error("the mount daemon at {socket}: {message}")]
    Daemon { socket: PathBuf, message: String },
    /// The daemon could not make the mount, or the mount ended in an error: the daemon's words.
    #[error("{message} (reported by the mount daemon at {socket})")]
    Mount { socket: PathBuf, message: String },
}

/// A mount the daemon serves for this process; it lasts until [`Unmounter::unmount`], an unmount from
/// outside, the daemon's stop, or this process's end (the daemon takes a closed connection as the word to
/// unmount).
#[derive(Debug)]
pub struct DaemonMount {
    socket: PathBuf,
    conn: UnixStream,
    replies: BufReader<Take<UnixStream>>,
}

/// Asks the daemon to unmount a [`DaemonMount`], from any thread.
#[derive(Debug)]
pub struct Unmounter(UnixStream);

impl DaemonMount {
    /// Asks the daemon at `socket` to mount `request` (its paths absolute); returns once the mount is live.
    pub fn start(socket: &Path, request: &MountRequest) -> Result<DaemonMount, ClientError> {
        let conn = UnixStream::connect(socket)
            .map_err(|error| ClientError::Unreachable { socket: socket.to_path_buf(), error })?;
        let replies = conn.try_clone().map(|c| BufReader::new(c.take(MAX_REPLY_BYTES)));
        let mut mount = DaemonMount {
            socket: socket.to_path_buf(),
            replies: replies.map_err(|e| daemon_error(socket, format!("sharing the connection: {e}")))?,
            conn,
        };
        (&mount.conn).write_all(&to_line(request)).map_err(|e| mount.error(format!("sending the request: {e}")))?;
        match mount.reply()? {
            Reply::Mounted => Ok(mount),
            Reply::Failed(message) => Err(mount.failed(message)),
            Reply::Unmounted(_) => Err(mount.error("it answered a mount with an unmount".into())),
        }
    }

    /// A handle that ends this mount.
    pub fn unmounter(&self) -> Result<Unmounter, ClientError> {
        let conn = self.conn.try_clone().map_err(|e| self.error(format!("sharing the connection: {e}")))?;
        Ok(Unmounter(conn))
    }

    /// Waits for the mount to end; returns what it read and fetched (`clip_node::MountSummary`'s text).
    pub fn wait(mut self) -> Result<String, ClientError> {
        match self.reply()? {
            Reply::Unmounted(summary) => Ok(summary),
            Reply::Failed(message) => Err(self.failed(message)),
            Reply::Mounted => Err(self.error("it answered twice that the mount is live".into())),
        }
    }

    /// The daemon's next reply.
    fn reply(&mut self) -> Result<Reply, ClientError> {
        let mut line = String::new();
        let read = self.replies.read_line(&mut line);
        let cut = self.replies.get_ref().limit() == 0 && !line.ends_with('\n');
        match read {
            Ok(_) if cut => Err(self.error("its replies ran past 1 MiB".into())),
            Ok(0) => Err(self.error("it closed the connection (did it stop?)".into())),
            Ok(_) => {
                serde_json::from_str(&line).map_err(|e| self.error(format!("not a reply of this version of clip: {e}")))
            }
            Err(e) => Err(self.error(format!("reading its reply: {e}"))),
        }
    }

    fn error(&self, message: String) -> ClientError {
        daemon_error(&self.socket, message)
    }

    fn failed(&self, message: String) -> ClientError {
        ClientError::Mount { socket: self.socket.clone(), message }
    }
}

/// What a user who cannot reach the daemon at `socket` can do about it.
fn what_to_do(socket: &Path, error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            format!(" (start one with `clip daemon --socket {}`)", socket.display())
        }
        std::io::ErrorKind::PermissionDenied => {
            " (the daemon serves its own user and root only: ask as one of them)".to_owned()
        }
        _ => String::new(),
    }
}

fn daemon_error(socket: &Path, message: String) -> ClientError {
    ClientError::Daemon { socket: socket.to_path_buf(), message }
}

impl Unmounter {
    /// Asks the daemon to unmount; it answers the [`DaemonMount::wait`] that is waiting. A daemon that has
    /// gone needs no asking.
    pub fn unmount(&mut self) {
        // The daemon takes any line, or the end of the stream, as the word to unmount.
        let _ = self.0.write_all(b"unmount\n");
    }
}

/// Blocks SIGINT and SIGTERM in this thread and every thread it starts after, and returns them to wait on
/// (`SigSet::wait`): a process without a runtime turns them into an unmount this way. Call it before
/// starting any thread.
pub fn block_stop_signals() -> nix::Result<SigSet> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block()?;
    Ok(signals)
}

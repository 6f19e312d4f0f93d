//! Standard output of the commands. A reader that goes away (`clip ls IMG | head -1`) is not an error:
//! [`Stdout`] marks the write that fails with `EPIPE` as [`StdoutClosed`], and `main` ends such a command
//! quietly with status 0, as ripgrep does. Only stdout's `EPIPE` is quiet: a broken pipe to a registry or
//! S3 stays an error.
//!
//! Why not restore the default `SIGPIPE` action, as C programs have it: the signal would kill `clip mount`
//! or `clip run` whose log pipe closed, leaving a dead FUSE mount or a container without its cleanup.

use std::io::{self, BufWriter, StdoutLock, Write};

/// Standard output, buffered (flush it before returning: a flush error is a write error).
pub struct Stdout(BufWriter<StdoutLock<'static>>);

/// Standard output.
pub fn stdout() -> Stdout {
    Stdout(BufWriter::new(io::stdout().lock()))
}

/// The reader of standard output went away.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

fn mark(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(mark)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(mark)
    }
}

/// Whether `e` comes from writing to a standard output nobody reads any more.
pub fn is_stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.is::<StdoutClosed>()
            || cause
                .downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<StdoutClosed>())
    })
}

//! `clip`: the command-line front end. Parses arguments, sets up logging and a runtime, and dispatches to
//! `commands/`, which turn arguments into library calls.

mod args;
mod commands;
mod output;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    return_large_buffers_to_the_os();
    let args = args::Args::parse();
    let filter = EnvFilter::try_from_env("CLIP_LOG").unwrap_or_else(|_| EnvFilter::new(args.log_filter()));
    // Colours only on a terminal: logs captured to a file or a journal stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(args)) {
        Ok(code) => code,
        // The reader of stdout went away (`clip ls IMG | head -1`): done, quietly (see `output`).
        Err(e) if output::is_stdout_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", render_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// Fixes glibc's mmap threshold at 128 KiB. By default glibc raises it every time a large block is freed, after
/// which spans (1 MiB buffers, made and dropped on every read of a mount that misses memory) come from the
/// heaps of its many thread arenas and stay there when freed: a mount's RSS grew by tens of MiB over the
/// bytes it really held. A fixed threshold keeps every buffer of 128 KiB or more in its own mapping,
/// returned to the system when dropped.
fn return_large_buffers_to_the_os() {
    // SAFETY: mallopt only sets an allocator parameter; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// The error and its causes, joined by ": ". Each error names what it adds and leaves its cause to the
/// chain (no message repeats its source's text), so nothing is said twice.
fn render_error(e: &anyhow::Error) -> String {
    e.chain().map(ToString::to_string).collect::<Vec<_>>().join(": ")
}

#[cfg(test)]
mod tests {
    use super::render_error;

    #[derive(Debug, thiserror::Error)]
    #[error("layer 0")]
    struct Wrapper(#[source] std::io::Error);

    #[test]
    fn every_cause_is_shown_once_in_order() {
        let io = std::io::Error::other("connection reset");
        let e = anyhow::Error::new(Wrapper(io)).context("indexing img");
        assert_eq!(render_error(&e), "indexing img: layer 0: connection reset");
    }
}

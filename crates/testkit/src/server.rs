//! Starting a server process for a test on a free 127.0.0.1 port: spawn it with its output in a log file,
//! wait until it answers, and try another port when it lost a race for the one picked. Shared by the
//! registry and S3 harnesses; a server that cannot start makes the test fail (with its log), never skip.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::registry::find_free_port;

const START_ATTEMPTS: usize = 5;

/// Starts `name` on a free port, waiting up to `timeout` for it: `command(addr)` builds the command line for `127.0.0.1:PORT` (after any
/// per-port setup, like a config file); its stdout and stderr go to `log_path`. Returns the child and its
/// address once `ready(addr)` holds.
///
/// # Panics
/// When it exits for another reason than a taken port, does not get ready in time, or loses the port
/// race 5 times; `install` says how to get the binary when it cannot run at all.
pub(crate) fn start_on_free_port(
    name: &str,
    install: &str,
    log_path: &Path,
    timeout: Duration,
    mut command: impl FnMut(&str) -> Command,
    mut ready: impl FnMut(&str) -> bool,
) -> (Child, String) {
    for _ in 0..START_ATTEMPTS {
        let addr = format!("127.0.0.1:{}", find_free_port());
        let log = File::create(log_path).unwrap_or_else(|e| panic!("creating {}: {e}", log_path.display()));
        let log2 = log.try_clone().unwrap_or_else(|e| panic!("cloning the {name} log handle: {e}"));
        let mut child = command(&addr)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {name}: {e} ({install})"));
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = read_log(log_path);
                if log.to_lowercase().contains("address already in use") {
                    break; // lost a port race with another test: try another port
                }
                panic!("{name} exited with {status} while starting on {addr}; its log:\n{log}");
            }
            if ready(&addr) {
                return (child, addr);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name} did not answer on {addr} within {timeout:?}; its log:\n{}", read_log(log_path));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    panic!("{name} could not bind a free port in {START_ATTEMPTS} attempts; last log:\n{}", read_log(log_path));
}

/// A server's log, or why it cannot be read.
pub(crate) fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

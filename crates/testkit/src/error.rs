//! The testkit's error type, and running external tools (skopeo, umoci, docker-registry) with errors that
//! carry their stderr.

use std::path::PathBuf;
use std::process::{Command, Output};

/// What went wrong in a testkit operation. Most public functions panic with this error's message instead of
/// returning it (a failure is a test failure); the `try_*` variants return it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An external tool could not be started.
    #[error("cannot run `{command}`: {source} (is it installed? `dev/test` installs every tool the tests use)")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// An external tool exited unsuccessfully.
    #[error("`{command}` failed ({status}):\n{stderr}{stdout}")]
    Failed {
        /// The command line.
        command: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// Its standard error.
        stderr: String,
        /// Its standard output (often empty).
        stdout: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// The command line of `cmd`, for messages.
pub(crate) fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion and returns its output, or an error with its stderr when it fails.
pub fn try_run(cmd: &mut Command) -> Result<Output, Error> {
    let command = command_line(cmd);
    let output = cmd.output().map_err(|source| Error::Spawn { command: command.clone(), source })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(Error::Failed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        })
    }
}

/// Runs `cmd` to completion and returns its standard output.
///
/// # Panics
/// When the command cannot be started or exits unsuccessfully; the message holds its command line and
/// stderr.
pub fn run(cmd: &mut Command) -> Vec<u8> {
    match try_run(cmd) {
        Ok(out) => out.stdout,
        Err(e) => panic!("{e}"),
    }
}

//! The mount daemon's client side, apart from the rest of clip so that a client is small: `clip-mount` links
//! this crate alone (under a megabyte) and starts in about a millisecond over a dropped page cache, where
//! `clip mount --daemon` first pages in all of clip.
//!
//! - [`MountRequest`] / [`Reply`]: the protocol, one JSON line each way ([`to_line`]); the daemon
//!   (`clip_node::serve_daemon`) reads requests and writes replies with these types.
//! - [`DaemonMount`]: asks a daemon for a mount and holds it until it ends ([`Unmounter`] ends it).
//! - [`MountOptions`]: the settings of a mount as command-line options, shared by `clip mount` and
//!   `clip-mount`, with their value parsers [`parse_size`] and [`parse_seconds`].

mod client;
mod options;
mod protocol;

pub use client::{block_stop_signals, ClientError, DaemonMount, Unmounter};
pub use options::{parse_seconds, parse_size, MountOptions};
pub use protocol::{archive_text, ended_line, to_line, MountRequest, Reply, DEFAULT_SOCKET};

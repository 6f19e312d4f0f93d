//! The image client: what a worker node runs on top of the lower layers.
//!
//! - [`open_archive`]: a `.clip` file of either kind plus the [`clip_store::ContentStore`] serving its bytes.
//! - [`extract`]: materialize the root filesystem into a directory (the result equals `umoci unpack`'s).
//! - [`mount_foreground`]: mount an archive with FUSE until it is unmounted, with Prometheus [`metrics`].

mod error;
mod extract;
pub mod metrics;
mod mount;
mod open;

pub use error::ClientError;
pub use extract::{extract, ExtractProgress, ExtractStats};
pub use mount::{mount_foreground, MountConfig, MountSummary};
pub use open::{open_archive, OpenOptions, Opened};

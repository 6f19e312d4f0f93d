//! `clip-s3`: one object in S3 (or an S3-compatible server) for data-carrying archives kept in a bucket.
//!
//! - [`S3Url`]: an `s3://BUCKET/KEY` location.
//! - [`S3Config`]: endpoint, region, addressing style and credentials, resolved like the AWS CLI does from
//!   `AWS_*` variables and `~/.aws/credentials` + `~/.aws/config` ([`S3Options`] adds command-line flags).
//! - [`S3Object`]: size (HEAD), ranged GETs, and upload of a local file (multipart for large ones), with a
//!   few retries of server errors; failures are [`S3Error`]s that say what to check.
//!
//! ```no_run
//! # async fn demo() -> Result<(), clip_s3::S3Error> {
//! use clip_s3::{S3Object, S3Options};
//! let object = S3Object::open(&"s3://images/app.clip".parse()?, &S3Options::default())?;
//! let header = object.read_range(0..32).await?;
//! println!("{} of {} bytes", header.len(), object.size().await?);
//! # Ok(()) }
//! ```
//!
//! Layer 2 of DESIGN.md (remote blob I/O, beside the image sources); knows nothing of the `.clip` format.

mod config;
mod error;
mod object;

pub use config::{S3Config, S3Credentials, S3Options, S3Url};
pub use error::S3Error;
pub use object::{S3Object, S3Stats};

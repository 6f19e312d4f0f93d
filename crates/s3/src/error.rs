//! The S3 crate's error type: messages name the object and, where the user can act, what to check. They
//! never contain credentials.

use std::path::PathBuf;

/// Why an S3 operation failed.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// An `s3://` location does not parse.
    #[error("invalid S3 location {input:?}: {reason} (expected s3://BUCKET/KEY)")]
    InvalidUrl { input: String, reason: String },

    /// The AWS configuration (environment, `~/.aws/config`, `~/.aws/credentials`) cannot be used.
    #[error("S3 configuration: {reason}")]
    Config { reason: String },

    /// The bucket or the object does not exist.
    #[error("{url} not found (check the bucket and key; `clip push FILE {url}` uploads an archive there)")]
    NotFound { url: String },

    /// S3 refused the request (HTTP 401/403).
    #[error(
        "{op} {url}: access denied: {detail} (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, \
         AWS_PROFILE or ~/.aws/credentials; credentials used: {credentials})"
    )]
    Auth { url: String, op: &'static str, detail: String, credentials: String },

    /// Any other failure after retries: server errors (5xx), network errors, timeouts.
    #[error(
        "{op} {url} failed: {detail} (is the S3 endpoint {endpoint} up and reachable? server errors were retried)"
    )]
    Request { url: String, op: &'static str, endpoint: String, detail: String },

    /// The server answered with fewer or more bytes than asked for, or the upload source changed.
    #[error("{op} {url}: {detail}")]
    Transfer { url: String, op: &'static str, detail: String },

    /// A local file (upload source, AWS config file) could not be read.
    #[error("reading {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl S3Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> S3Error {
        let path = path.into();
        move |source| S3Error::Io { path, source }
    }
}

//! The snapshotter's error type, and how each error reaches containerd: as the gRPC status code that
//! containerd's `errdefs` turns back into `ErrNotFound`, `ErrAlreadyExists`, `ErrFailedPrecondition`, …

use std::path::PathBuf;

use containerd_snapshots::tonic::{Code, Status};

/// What went wrong in a snapshotter operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No snapshot has this key or name.
    #[error("snapshot {key:?} does not exist")]
    NotFound {
        /// The key or name asked for.
        key: String,
    },
    /// A snapshot with this key or name exists already. Also the answer to a Prepare whose layer was
    /// committed as a remote snapshot: containerd then skips the layer.
    #[error("snapshot {key:?} already exists")]
    AlreadyExists {
        /// The key or name.
        key: String,
    },
    /// A snapshot was asked for with an empty key or name.
    #[error("a snapshot key must not be empty")]
    EmptyKey,
    /// The parent of a new snapshot is not a committed snapshot.
    #[error("parent {parent:?} is not a committed snapshot")]
    ParentNotCommitted {
        /// The parent's name.
        parent: String,
    },
    /// Commit of a snapshot that is not active (a view, or committed already).
    #[error("snapshot {key:?} is not active")]
    NotActive {
        /// The key.
        key: String,
    },
    /// Mounts of a committed snapshot (only active snapshots and views have mounts).
    #[error("snapshot {key:?} is committed: only active snapshots and views have mounts")]
    NotMountable {
        /// The name.
        key: String,
    },
    /// Remove of a snapshot other snapshots are based on.
    #[error("snapshot {key:?} has children: remove them first")]
    HasChildren {
        /// The key or name.
        key: String,
    },
    /// An Update of a field other than the labels.
    #[error("cannot update field {field:?} of snapshot {key:?} (only labels can change)")]
    Immutable {
        /// The snapshot.
        key: String,
        /// The field path asked for.
        field: String,
    },
    /// A Walk filter that does not parse, or uses what this snapshotter does not support.
    #[error("filter {filter:?}: {reason}")]
    Filter {
        /// The filter as given.
        filter: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The parent chain of a snapshot is broken or loops (a damaged metadata database).
    #[error("the parent chain of snapshot {key:?} is broken at {missing:?}")]
    BrokenChain {
        /// The snapshot whose chain was followed.
        key: String,
        /// The parent that is missing, or seen twice.
        missing: String,
    },
    /// The metadata database failed.
    #[error("snapshot metadata database {path}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// redb's error (boxed: it is large, and rare).
        #[source]
        source: Box<redb::Error>,
    },
    /// A metadata record does not decode (a damaged database or one of a newer version).
    #[error("metadata record of snapshot {key:?}")]
    Record {
        /// The snapshot.
        key: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// A filesystem operation on the snapshotter's root failed.
    #[error("{path}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The unix socket could not be served.
    #[error("serving containerd's snapshots API on {path}")]
    Serve {
        /// The socket.
        path: PathBuf,
        /// tonic's error.
        #[source]
        source: containerd_snapshots::tonic::transport::Error,
    },
    /// A blocking snapshot operation panicked or was cancelled.
    #[error("a snapshot operation did not finish")]
    Task(#[source] tokio::task::JoinError),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// The gRPC status code containerd maps back to its error kinds.
    pub fn code(&self) -> Code {
        match self {
            Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::EmptyKey | Error::ParentNotCommitted { .. } | Error::Immutable { .. } | Error::Filter { .. } => {
                Code::InvalidArgument
            }
            Error::NotActive { .. } | Error::NotMountable { .. } | Error::HasChildren { .. } => {
                Code::FailedPrecondition
            }
            Error::BrokenChain { .. }
            | Error::Database { .. }
            | Error::Record { .. }
            | Error::Io { .. }
            | Error::Serve { .. }
            | Error::Task(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.code(), clip_store::error_chain(&e))
    }
}

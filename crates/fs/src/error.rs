//! The filesystem crate's error type: what can go wrong mounting, waiting on and unmounting a clip mount.

use std::path::PathBuf;
use std::time::Duration;

/// Why a mount could not be made, waited on or taken down.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("mountpoint {p} does not exist (create it first: mkdir -p {p})", p = path.display())]
    MountpointMissing { path: PathBuf },
    #[error("mountpoint {p} is not a directory", p = path.display())]
    MountpointNotDir { path: PathBuf },
    #[error("mountpoint {p} is not empty: the mount would hide what is in it (mount on an empty directory)", p = path.display())]
    MountpointNotEmpty { path: PathBuf },
    #[error("cannot use mountpoint {p}", p = path.display())]
    Mountpoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "/dev/fuse is missing (is fuse3 installed? apt-get install fuse3; in a container, pass --device /dev/fuse)"
    )]
    NoFuseDevice,
    #[error(
        "permission denied mounting at {p} (mount as root, or install fuse3 so the setuid fusermount3 \
         can mount for you; allow_other as a user needs user_allow_other in /etc/fuse.conf; in a container, \
         pass --device /dev/fuse --cap-add SYS_ADMIN)",
        p = path.display()
    )]
    Permission {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting at {p}", p = path.display())]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the mount at {p} did not appear in /proc/self/mountinfo within {timeout:?}", p = path.display())]
    MountTimeout { path: PathBuf, timeout: Duration },
    #[error("{p} is busy: files under it are still open (close them, or unmount lazily with `umount -l {p}`)", p = path.display())]
    Busy { path: PathBuf },
    #[error("unmounting {p}", p = path.display())]
    Unmount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the FUSE session of {p} ended with an error", p = path.display())]
    Session {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

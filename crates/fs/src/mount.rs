//! Mounting: [`mount`] starts a FUSE session for a [`ClipFs`] in a background thread and returns once the
//! mount is visible in `/proc/self/mountinfo`; the [`MountHandle`] unmounts it or waits until someone else
//! does (`umount`, `fusermount3 -u`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, MountOption, Session, SessionACL};
use tracing::{debug, warn};

use crate::state::{ClipFs, Ttls};
use crate::stats::FsStats;
use crate::FsError;

/// How to mount. `Default` suits the lower layer of a container root filesystem, mounted by root: `nosuid`
/// and `nodev`, so that the bare mount never lends its setuid binaries or device nodes to a local user. A
/// container still gets its setuid bits from the overlay laid over this mount, which is mounted without
/// `nosuid` (the kernel checks the flags of the mount a program is executed from, the overlay's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Let users other than the mounting one in (needed by containers). Default: true when running as root.
    pub allow_other: bool,
    /// Source shown in `/proc/mounts`. Default `clip`.
    pub fsname: String,
    /// Type shown as `fuse.<subtype>`. Default `clip`.
    pub subtype: String,
    /// How long the kernel caches names (default 1 day: the image is immutable).
    pub entry_ttl: Duration,
    /// How long the kernel caches attributes (default 1 day).
    pub attr_ttl: Duration,
    /// How long the kernel caches "no such file" answers (default 1 day).
    pub negative_ttl: Duration,
    /// Let the kernel check permissions from mode, uid and gid (the `default_permissions` option). Default
    /// true; without it every user may open every file and only `access(2)` consults the mode bits.
    pub default_permissions: bool,
    /// Mount with `MS_RDONLY`, so the kernel refuses writes before asking us. Default true.
    pub read_only: bool,
    /// Honour setuid/setgid bits and file capabilities of the image when a program is run from this mount.
    /// Default false (`nosuid`): any local user who can reach the mount could otherwise run the image's
    /// setuid-root binaries as root. Containers do not need it (see the type's documentation).
    pub suid: bool,
    /// Allow opening device nodes of the image. Default false.
    pub dev: bool,
    /// Threads reading requests from the kernel. Default 1: reads run on the tokio runtime anyway.
    pub threads: usize,
    /// How long to wait for the mount to appear. Default 10 s.
    pub timeout: Duration,
}

impl Default for MountOptions {
    fn default() -> Self {
        let root = is_root();
        let ttls = Ttls::default();
        MountOptions {
            allow_other: root,
            fsname: "clip".into(),
            subtype: "clip".into(),
            entry_ttl: ttls.entry,
            attr_ttl: ttls.attr,
            negative_ttl: ttls.negative,
            default_permissions: true,
            read_only: true,
            suid: false,
            dev: false,
            threads: 1,
            timeout: Duration::from_secs(10),
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl MountOptions {
    fn fuser_config(&self) -> Config {
        let mut opts = vec![MountOption::FSName(self.fsname.clone()), MountOption::Subtype(self.subtype.clone())];
        opts.push(if self.read_only { MountOption::RO } else { MountOption::RW });
        opts.push(if self.suid { MountOption::Suid } else { MountOption::NoSuid });
        opts.push(if self.dev { MountOption::Dev } else { MountOption::NoDev });
        opts.push(MountOption::NoAtime);
        if self.default_permissions {
            opts.push(MountOption::DefaultPermissions);
        }
        let mut config = Config::default();
        config.mount_options = opts;
        config.acl = if self.allow_other { SessionACL::All } else { SessionACL::Owner };
        config.n_threads = Some(self.threads.max(1));
        config.clone_fd = self.threads > 1;
        config
    }
}

/// A live mount. Dropping it detaches the mount (lazily, so a busy mount never blocks the drop).
pub struct MountHandle {
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
    stats: Arc<FsStats>,
}

impl std::fmt::Debug for MountHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountHandle").field("mountpoint", &self.mountpoint).finish_non_exhaustive()
    }
}

/// Mounts `fs` at `mountpoint`, an existing empty directory (a non-empty one is refused: the mount would
/// hide its contents), and returns when the mount is live.
pub fn mount(mut fs: ClipFs, mountpoint: &Path, opts: &MountOptions) -> Result<MountHandle, FsError> {
    let path = mountpoint.to_path_buf();
    match std::fs::metadata(mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(FsError::MountpointNotDir { path }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(FsError::MountpointMissing { path }),
        Err(source) => return Err(FsError::Mountpoint { path, source }),
    }
    let mut entries =
        std::fs::read_dir(mountpoint).map_err(|source| FsError::Mountpoint { path: path.clone(), source })?;
    if entries.next().is_some() {
        return Err(FsError::MountpointNotEmpty { path });
    }
    let canonical = mountpoint.canonicalize().map_err(|source| FsError::Mountpoint { path: path.clone(), source })?;
    if !Path::new("/dev/fuse").exists() {
        return Err(FsError::NoFuseDevice);
    }
    fs.set_ttls(Ttls { entry: opts.entry_ttl, attr: opts.attr_ttl, negative: opts.negative_ttl });
    let stats = fs.stats();
    let session = Session::new(fs, &canonical, &opts.fuser_config()).map_err(|source| match source.kind() {
        io::ErrorKind::PermissionDenied => FsError::Permission { path: path.clone(), source },
        io::ErrorKind::NotFound if !Path::new("/dev/fuse").exists() => FsError::NoFuseDevice,
        _ => FsError::Mount { path: path.clone(), source },
    })?;
    let session = session.spawn().map_err(|source| FsError::Mount { path: path.clone(), source })?;
    let handle = MountHandle { mountpoint: canonical, session: Some(session), stats };
    let deadline = Instant::now() + opts.timeout;
    while !is_mounted(&handle.mountpoint) {
        if Instant::now() >= deadline {
            return Err(FsError::MountTimeout { path, timeout: opts.timeout });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    debug!(mountpoint = %handle.mountpoint.display(), "mounted");
    Ok(handle)
}

impl MountHandle {
    /// Where the filesystem is mounted (canonical path).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Whether the filesystem is still mounted (it may have been unmounted from outside).
    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.mountpoint)
    }

    /// The mounted filesystem's counters.
    pub fn stats(&self) -> Arc<FsStats> {
        Arc::clone(&self.stats)
    }

    /// Unmounts and waits for the session to end. A mount with open files is [`FsError::Busy`] and stays
    /// mounted (the handle can be used again).
    pub fn unmount(&mut self) -> Result<(), FsError> {
        let Some(session) = self.session.take() else { return Ok(()) };
        match umount(&self.mountpoint, 0) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                self.session = Some(session);
                return Err(FsError::Busy { path: self.mountpoint.clone() });
            }
            // Not root: fuser goes through the setuid fusermount3.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                return session
                    .umount_and_join()
                    .map_err(|source| FsError::Unmount { path: self.mountpoint.clone(), source });
            }
            Err(source) => {
                self.session = Some(session);
                return Err(FsError::Unmount { path: self.mountpoint.clone(), source });
            }
        }
        self.join(session)
    }

    /// Waits for the session thread of an unmounted filesystem to end.
    fn join(&self, mut session: BackgroundSession) -> Result<(), FsError> {
        let thread = std::mem::replace(&mut session.guard, std::thread::spawn(|| Ok(())));
        let ended = thread.join();
        release(session);
        match ended {
            // The kernel ends the connection when the filesystem goes: a read of /dev/fuse then fails with
            // ENODEV, which fuser takes as the session's end, or now and then ECONNABORTED when a request
            // was in flight as the unmount went through (2 runs in 300 of a test that closes a file and
            // unmounts at once; fuser returns it as an error): both are a clean end.
            Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
            Ok(result) => result.map_err(|source| FsError::Session { path: self.mountpoint.clone(), source }),
            Err(_) => Err(FsError::Session {
                path: self.mountpoint.clone(),
                source: io::Error::other("the FUSE session thread panicked"),
            }),
        }
    }

    /// Blocks until the filesystem is unmounted from outside (`umount`, `fusermount3 -u`) and its session
    /// has ended.
    pub fn wait(mut self) -> Result<(), FsError> {
        match self.session.take() {
            Some(session) => self.join(session),
            None => Ok(()),
        }
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else { return };
        if is_mounted(&self.mountpoint) {
            if let Err(error) = umount(&self.mountpoint, libc::MNT_DETACH) {
                warn!(mountpoint = %self.mountpoint.display(), %error, "lazy unmount failed");
            }
        }
        // The session thread ends by itself once the kernel drops the connection.
        let mut session = session;
        drop(std::mem::replace(&mut session.guard, std::thread::spawn(|| Ok(()))));
        release(session);
    }
}

/// Ends fuser's hold on a filesystem that is unmounted (or detached) already; the session's thread has been
/// taken out of it (joined or let go).
///
/// fuser 0.18.0 unmounts the mountpoint again when its session is dropped, even when the filesystem is
/// gone: its `is_mounted` check reads `POLLERR` on `/dev/fuse` (the connection is dead) as "still mounted"
/// (fixed upstream by cberner/fuser#703). The drop then logs `WARN fuser::mnt: Unmount failed: Invalid
/// argument` after every unmount, ours or from outside. Asking fuser to unmount explicitly makes the same
/// redundant `umount` return its `EINVAL` to us instead, where it is expected (`umount_and_join` returns
/// before joining when its unmount fails, which is why the thread is taken out first).
fn release(session: BackgroundSession) {
    match session.umount_and_join() {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        Err(error) => debug!(%error, "fuser's unmount of an unmounted filesystem"),
    }
}

/// `umount2(path, flags)`.
fn umount(path: &Path, flags: libc::c_int) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mountpoint contains a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call; umount2 only reads it.
    let rc = unsafe { libc::umount2(c.as_ptr(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether a FUSE filesystem is mounted at `mountpoint` (canonical), per `/proc/self/mountinfo`.
pub(crate) fn is_mounted(mountpoint: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").map(|info| mountinfo_has_fuse(&info, mountpoint)).unwrap_or(false)
}

/// Whether `mountinfo` lists a `fuse` or `fuse.*` mount at `mountpoint`.
fn mountinfo_has_fuse(mountinfo: &str, mountpoint: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let want = mountpoint.as_os_str().as_bytes();
    mountinfo.lines().any(|line| {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS
        let mut fields = line.split(' ');
        let Some(point) = fields.nth(4) else { return false };
        let Some((_, after)) = line.split_once(" - ") else { return false };
        let fstype = after.split(' ').next().unwrap_or("");
        (fstype == "fuse" || fstype.starts_with("fuse.")) && unescape(point) == want
    })
}

/// Undoes the octal escapes (`\040` for a space) of mountinfo paths.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
98 29 0:52 / /tmp/with\\040space rw,nosuid,nodev,relatime shared:60 - fuse.clip clip rw,user_id=0,group_id=0
99 29 0:53 / /mnt/plain rw,relatime - ext4 /dev/vda rw
";

    #[test]
    fn finds_fuse_mounts_by_unescaped_path_only() {
        assert!(mountinfo_has_fuse(INFO, Path::new("/tmp/with space")));
        assert!(!mountinfo_has_fuse(INFO, Path::new("/tmp/with\\040space")));
        assert!(!mountinfo_has_fuse(INFO, Path::new("/mnt/plain")), "not a FUSE mount");
        assert!(!mountinfo_has_fuse(INFO, Path::new("/proc")));
        assert!(!mountinfo_has_fuse("garbage\n\n1 2", Path::new("/")));
    }

    #[test]
    fn mounts_are_nosuid_and_nodev_unless_asked() {
        let opts = MountOptions::default().fuser_config().mount_options;
        assert!(opts.contains(&MountOption::NoSuid) && opts.contains(&MountOption::NoDev), "{opts:?}");
        let suid = MountOptions { suid: true, ..MountOptions::default() }.fuser_config().mount_options;
        assert!(suid.contains(&MountOption::Suid) && !suid.contains(&MountOption::NoSuid), "{suid:?}");
    }

    #[test]
    fn unescape_keeps_incomplete_escapes() {
        assert_eq!(unescape("a\\040b"), b"a b");
        assert_eq!(unescape("a\\04"), b"a\\04");
        assert_eq!(unescape("\\134"), b"\\");
    }
}

//! Writing a file atomically, the one way clip does it ([`write_atomically`]): the output is either the
//! old file or the complete new one, never a half-written file, and never anything but a regular file.
//!
//! A path that exists and is not a regular file (a device such as `/dev/full`, a FIFO, a socket, a
//! directory, a symlink) is refused and left as it is ([`check_output`]; worth calling before expensive
//! work). The bytes go to a temporary file in the same directory, are synced, and the file is renamed
//! into place with the mode any new file gets: `0666` less the umask.

use std::fs::File;
use std::path::Path;

use tempfile::NamedTempFile;
use tracing::debug;

use crate::ImageError;

/// Refuses `path` as an output if it exists and is not a regular file (symlinks are not followed).
pub fn check_output(path: &Path) -> Result<(), ImageError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_file() => Err(ImageError::OutputNotAFile {
            path: path.to_path_buf(),
            kind: clip_format::file_type_name(meta.file_type()),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io(path, "checking the output")(e)),
    }
}

/// Writes `path` atomically: `write` fills a temporary file next to it, which is then synced and renamed
/// into place (see the module docs). Returns what `write` returned; on any error `path` is untouched.
pub fn write_atomically<T>(
    path: &Path,
    write: impl FnOnce(&mut File) -> Result<T, ImageError>,
) -> Result<T, ImageError> {
    let mut tmp = temp_next_to(path)?;
    let value = write(tmp.as_file_mut())?;
    put_in_place(tmp, path)?;
    Ok(value)
}

/// The temporary file [`write_atomically`] fills, for writers that cannot be a closure (an async
/// download): fill it, then [`put_in_place`]. Refuses a `path` that is not a regular file.
pub(crate) fn temp_next_to(path: &Path) -> Result<NamedTempFile, ImageError> {
    check_output(path)?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    tempfile::Builder::new()
        .prefix(".clip-")
        // Created with mode 0666, which the umask reduces (0644 under umask 022), like any new file: mounts
        // and runtimes often run as another user.
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(ImageError::io(dir, "creating a temporary file"))
}

/// Syncs `tmp` (from [`temp_next_to`]) and renames it to `path`.
pub(crate) fn put_in_place(tmp: NamedTempFile, path: &Path) -> Result<(), ImageError> {
    tmp.as_file().sync_all().map_err(ImageError::io(path, "syncing"))?;
    // Checked again just before the rename: a device created meanwhile is not replaced either.
    check_output(path)?;
    tmp.persist(path).map_err(|e| ImageError::io(path, "renaming into place")(e.error))?;
    // The rename itself is durable once the directory is synced (best effort: not every filesystem can).
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Err(error) = File::open(dir).and_then(|d| d.sync_all()) {
        debug!(dir = %dir.display(), %error, "could not sync the directory");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_a_regular_file_and_refuses_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::write(&out, b"old").unwrap();
        let n = write_atomically(&out, |f| f.write_all(b"new").map(|()| 3).map_err(ImageError::io(&out, "w")));
        assert_eq!(n.unwrap(), 3);
        assert_eq!(std::fs::read(&out).unwrap(), b"new");
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o600, 0o600, "{mode:o}");

        // A failed write leaves the old file and no temporary file.
        let failed = write_atomically(&out, |_| -> Result<(), _> {
            Err(ImageError::io(&out, "w")(std::io::Error::other("boom")))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&out).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&out, &link).unwrap();
        for (path, kind) in [(&sub, "a directory"), (&link, "a symlink")] {
            match write_atomically(path, |_| Ok(())) {
                Err(ImageError::OutputNotAFile { kind: k, .. }) => assert_eq!(k, kind),
                other => panic!("{}: {other:?}", path.display()),
            }
        }
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    }
}

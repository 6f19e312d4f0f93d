//! Opening a file a user named as input ([`open_regular`]): a `.clip` file, a profile, a configuration.
//! Only a regular file is read: a FIFO must not block the open, and a directory or device must not be
//! read (or mapped) at all, each with an error that says what the path is.

use std::fs::{File, FileType, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Opens `path` (following symlinks) for reading if it is a regular file. Anything else is refused with
/// an [`io::ErrorKind::InvalidInput`] error "not a regular file (a FIFO)": checked before opening, and
/// again on the open descriptor (`O_NONBLOCK`, so a FIFO swapped in meanwhile cannot block the open).
pub fn open_regular(path: &Path) -> io::Result<File> {
    let meta = std::fs::metadata(path)?;
    check(meta.file_type())?;
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    // O_NONBLOCK does not change how a regular file reads.
    check(file.metadata()?.file_type())?;
    Ok(file)
}

fn check(ft: FileType) -> io::Result<()> {
    if ft.is_file() {
        return Ok(());
    }
    Err(io::Error::new(io::ErrorKind::InvalidInput, format!("not a regular file ({})", file_type_name(ft))))
}

/// What a file type is, in words: "a directory", "a FIFO", "a character device", …
pub fn file_type_name(ft: FileType) -> &'static str {
    if ft.is_file() {
        "a regular file"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symlink"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_open() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(open_regular(&file).is_ok());
        let e = open_regular(dir.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(e.to_string(), "not a regular file (a directory)");
        let e = open_regular(Path::new("/dev/null")).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file (a character device)");
        assert_eq!(open_regular(&dir.path().join("missing")).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}

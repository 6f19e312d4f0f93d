//! Where the dynamic loader looks for a library: `$ORIGIN` in a search path, the standard directories, and
//! `:`-separated lists (`PATH`, `LD_LIBRARY_PATH`, `DT_RPATH`, `DT_RUNPATH`).

use super::elf::{triplet, Kind};

/// `$ORIGIN` / `${ORIGIN}` in a search path replaced by `origin`; `None` for a path with other dynamic
/// string tokens (`$LIB`, `$PLATFORM`), which are left unsearched.
pub(super) fn expand_origin(dir: &[u8], origin: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(dir.len());
    let mut rest = dir;
    while let Some(i) = rest.iter().position(|&b| b == b'$') {
        out.extend_from_slice(&rest[..i]);
        let after = &rest[i + 1..];
        let skip = if after.starts_with(b"{ORIGIN}") {
            8
        } else if after.starts_with(b"ORIGIN") {
            6
        } else {
            return None;
        };
        out.extend_from_slice(origin);
        rest = &after[skip..];
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// The loader's standard directories for libraries of `kind`, in its order (Debian's `ld.so.conf` first).
pub(super) fn standard_dirs(kind: Kind) -> Vec<Vec<u8>> {
    let mut dirs: Vec<String> = Vec::new();
    if let Some(t) = triplet(kind) {
        dirs.push(format!("/usr/local/lib/{t}"));
    }
    dirs.push("/usr/local/lib".into());
    if let Some(t) = triplet(kind) {
        dirs.extend([format!("/lib/{t}"), format!("/usr/lib/{t}")]);
    }
    if kind.class64 {
        dirs.extend(["/lib64".into(), "/usr/lib64".into()]);
    }
    dirs.extend(["/lib".into(), "/usr/lib".into()]);
    dirs.into_iter().map(String::into_bytes).collect()
}

/// A `:`-separated list, without empty entries.
pub(super) fn split_list(list: &[u8]) -> Vec<Vec<u8>> {
    list.split(|&b| b == b':').filter(|p| !p.is_empty()).map(<[u8]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_expands_and_other_tokens_are_skipped() {
        assert_eq!(expand_origin(b"$ORIGIN/../lib", b"/opt/app/bin").unwrap(), b"/opt/app/bin/../lib");
        assert_eq!(expand_origin(b"${ORIGIN}:x", b"/o").unwrap(), b"/o:x");
        assert_eq!(expand_origin(b"/usr/lib", b"/o").unwrap(), b"/usr/lib");
        assert!(expand_origin(b"/usr/$LIB", b"/o").is_none());
    }
}

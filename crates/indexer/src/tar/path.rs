//! Entry path normalization: relative, no `.` or empty components, no trailing slash; absolute paths and
//! `..` components are refused because a layer that has them is malformed or hostile.

/// Normalize a raw tar path. `None` when the path is absolute or has a `..` component. The empty result
/// names the root directory (`./`, `.`, or an empty name).
pub(super) fn normalize(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.first() == Some(&b'/') {
        return None;
    }
    let mut out = Vec::with_capacity(raw.len());
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return None,
            name => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(name);
            }
        }
    }
    Some(out)
}

/// A path for error messages: lossy UTF-8, `.` for the root.
pub(crate) fn display(path: &[u8]) -> String {
    if path.is_empty() {
        ".".to_owned()
    } else {
        String::from_utf8_lossy(path).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;

    fn n(raw: &str) -> Option<String> {
        normalize(raw.as_bytes()).map(|p| String::from_utf8(p).unwrap())
    }

    #[test]
    fn normalizes() {
        assert_eq!(n("./usr/bin/"), Some("usr/bin".into()));
        assert_eq!(n("usr//bin///ls"), Some("usr/bin/ls".into()));
        assert_eq!(n("a/./b"), Some("a/b".into()));
        assert_eq!(n("./"), Some("".into()));
        assert_eq!(n("."), Some("".into()));
        assert_eq!(n(""), Some("".into()));
        assert_eq!(n("..."), Some("...".into()));
        assert_eq!(n("a/..b"), Some("a/..b".into()));
    }

    #[test]
    fn refuses() {
        assert_eq!(n("/etc/passwd"), None);
        assert_eq!(n("../x"), None);
        assert_eq!(n("a/../../x"), None);
        assert_eq!(n("a/.."), None);
        assert_eq!(n("//x"), None);
    }

    #[test]
    fn raw_bytes() {
        let raw = b"caf\xe9/\xff\xfe";
        assert_eq!(normalize(raw).unwrap(), raw.to_vec());
    }
}

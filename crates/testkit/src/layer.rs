//! Tar layer builder: writes tar bytes with control over every header field.
//!
//! [`Entry`] describes one member (directory, file, symlink, hard link, device, FIFO, whiteout, opaque
//! marker) with its mode, owner, mtime (with nanoseconds), xattrs and the encoding to use for values that
//! do not fit the classic ustar fields. [`LayerBuilder`] appends entries in the order given (order matters
//! for layers: an opaque marker or whiteout before or after an entry of the same layer) and closes the
//! archive with the two zero blocks.
//!
//! Encodings produced, chosen per entry:
//! - names and link targets longer than 100 bytes: PAX `path`/`linkpath` ([`LongNames::Pax`], the default),
//!   GNU `././@LongLink` entries of type `L`/`K` ([`LongNames::Gnu`]), or the ustar `prefix` field
//!   ([`LongNames::UstarPrefix`]);
//! - uid/gid of 2^21 and more: PAX `uid`/`gid` ([`BigNumbers::Pax`], the default) or GNU base-256 numeric
//!   fields ([`BigNumbers::Base256`]);
//! - mtimes with a non-zero nanosecond part: PAX `mtime=SEC.NSEC`;
//! - xattrs: PAX `SCHILY.xattr.NAME`.
//!
//! ```
//! use clip_testkit::{Entry, LayerBuilder};
//! let tar = LayerBuilder::new()
//!     .dir("usr")
//!     .dir("usr/bin")
//!     .entry(Entry::file("usr/bin/ping", "#!/bin/sh\n").mode(0o4755).owner(0, 0))
//!     .whiteout("usr/bin/old")
//!     .finish();
//! assert_eq!(tar.len() % 512, 0);
//! ```

/// Size of one tar block; headers and padded contents are multiples of it.
pub const BLOCK: usize = 512;

/// The mtime entries get unless told otherwise: 2023-11-14T22:13:20Z.
pub const DEFAULT_MTIME: u64 = 1_700_000_000;

/// Prefix of a whiteout entry's file name (`.wh.NAME` hides `NAME` of lower layers).
pub const WHITEOUT_PREFIX: &str = ".wh.";

/// File name of the opaque-directory marker (hides every lower-layer entry of its directory).
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// How names and link targets longer than the 100-byte ustar fields are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LongNames {
    /// PAX extended header records `path` / `linkpath` (POSIX.1-2001).
    #[default]
    Pax,
    /// GNU `././@LongLink` entries: type `L` for the name, type `K` for the link target. The entry uses the
    /// GNU magic (`ustar  \0`).
    Gnu,
    /// The ustar `prefix` field (the name split at a `/` into a prefix ≤ 155 bytes and a name ≤ 100 bytes);
    /// falls back to PAX when no split fits. Link targets always use PAX.
    UstarPrefix,
}

/// How uid/gid values that do not fit 7 octal digits (2^21 and more) are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BigNumbers {
    /// PAX extended header records `uid` / `gid`; the header fields hold 0.
    #[default]
    Pax,
    /// GNU base-256: the field's first byte is `0x80`, the other 7 bytes hold the big-endian value. The
    /// entry uses the GNU magic unless it uses [`LongNames::UstarPrefix`].
    Base256,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Body {
    Dir,
    File(Vec<u8>),
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
    Fifo,
}

impl Body {
    fn typeflag(&self) -> u8 {
        match self {
            Body::File(_) => b'0',
            Body::Hardlink(_) => b'1',
            Body::Symlink(_) => b'2',
            Body::CharDevice { .. } => b'3',
            Body::BlockDevice { .. } => b'4',
            Body::Dir => b'5',
            Body::Fifo => b'6',
        }
    }
}

/// One tar member with all of its header fields. Build it with a constructor ([`Entry::file`],
/// [`Entry::dir`], …) and adjust it with the chaining setters.
///
/// Defaults: mode 0o755 for directories, 0o777 for symlinks, 0o644 for everything else; uid/gid 0; empty
/// user/group names; mtime [`DEFAULT_MTIME`] with no nanoseconds; no xattrs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    path: Vec<u8>,
    body: Body,
    mode: u32,
    uid: u64,
    gid: u64,
    uname: Vec<u8>,
    gname: Vec<u8>,
    mtime: u64,
    mtime_nsec: u32,
    xattrs: Vec<(String, Vec<u8>)>,
    pax: Vec<(String, Vec<u8>)>,
    long_names: LongNames,
    big_numbers: BigNumbers,
}

impl Entry {
    fn new(path: impl Into<Vec<u8>>, body: Body) -> Self {
        let mode = match body {
            Body::Dir => 0o755,
            Body::Symlink(_) => 0o777,
            _ => 0o644,
        };
        Entry {
            path: path.into(),
            body,
            mode,
            uid: 0,
            gid: 0,
            uname: Vec::new(),
            gname: Vec::new(),
            mtime: DEFAULT_MTIME,
            mtime_nsec: 0,
            xattrs: Vec::new(),
            pax: Vec::new(),
            long_names: LongNames::default(),
            big_numbers: BigNumbers::default(),
        }
    }

    /// A directory; a trailing `/` is added to the header name when missing.
    pub fn dir(path: impl Into<Vec<u8>>) -> Self {
        Entry::new(path, Body::Dir)
    }

    /// A regular file with these contents.
    pub fn file(path: impl Into<Vec<u8>>, contents: impl Into<Vec<u8>>) -> Self {
        Entry::new(path, Body::File(contents.into()))
    }

    /// A symbolic link to `target` (stored verbatim: relative, absolute or dangling).
    pub fn symlink(path: impl Into<Vec<u8>>, target: impl Into<Vec<u8>>) -> Self {
        Entry::new(path, Body::Symlink(target.into()))
    }

    /// A hard link to `target`, a path of this or a lower layer relative to the image root.
    pub fn hardlink(path: impl Into<Vec<u8>>, target: impl Into<Vec<u8>>) -> Self {
        Entry::new(path, Body::Hardlink(target.into()))
    }

    /// A character device.
    pub fn char_device(path: impl Into<Vec<u8>>, major: u32, minor: u32) -> Self {
        Entry::new(path, Body::CharDevice { major, minor })
    }

    /// A block device.
    pub fn block_device(path: impl Into<Vec<u8>>, major: u32, minor: u32) -> Self {
        Entry::new(path, Body::BlockDevice { major, minor })
    }

    /// A named pipe.
    pub fn fifo(path: impl Into<Vec<u8>>) -> Self {
        Entry::new(path, Body::Fifo)
    }

    /// A whiteout hiding `path` of lower layers: an empty regular file named `DIR/.wh.NAME`.
    pub fn whiteout(path: impl Into<Vec<u8>>) -> Self {
        let path = path.into();
        let (dir, name) = split_last(&path);
        let mut wh = dir.to_vec();
        wh.extend_from_slice(WHITEOUT_PREFIX.as_bytes());
        wh.extend_from_slice(name);
        Entry::file(wh, Vec::new())
    }

    /// The opaque marker of `dir`: an empty regular file `DIR/.wh..wh..opq` hiding every lower-layer entry
    /// inside `dir` (entries of its own layer stay, wherever they are in the stream).
    pub fn opaque(dir: impl Into<Vec<u8>>) -> Self {
        let mut path = dir.into();
        if !path.is_empty() && !path.ends_with(b"/") {
            path.push(b'/');
        }
        path.extend_from_slice(OPAQUE_MARKER.as_bytes());
        Entry::file(path, Vec::new())
    }

    /// The mode field, written as given (permission bits including setuid/setgid/sticky; file type bits such
    /// as `0o100000` may be included, as some writers do).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Numeric owner and group.
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// Symbolic owner and group names (`uname`/`gname`, at most 32 bytes each).
    pub fn owner_names(mut self, uname: &str, gname: &str) -> Self {
        self.uname = uname.as_bytes().to_vec();
        self.gname = gname.as_bytes().to_vec();
        self
    }

    /// Modification time; a non-zero `nsec` is written as a PAX `mtime` record.
    pub fn mtime(mut self, sec: u64, nsec: u32) -> Self {
        self.mtime = sec;
        self.mtime_nsec = nsec;
        self
    }

    /// An extended attribute, written as a PAX `SCHILY.xattr.NAME` record.
    pub fn xattr(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.xattrs.push((name.to_owned(), value.into()));
        self
    }

    /// An arbitrary PAX record, written after the ones this builder derives (so it wins over them).
    pub fn pax(mut self, key: &str, value: impl Into<Vec<u8>>) -> Self {
        self.pax.push((key.to_owned(), value.into()));
        self
    }

    /// How a long name or link target is written.
    pub fn long_names(mut self, how: LongNames) -> Self {
        self.long_names = how;
        self
    }

    /// How uid/gid of 2^21 and more are written.
    pub fn big_numbers(mut self, how: BigNumbers) -> Self {
        self.big_numbers = how;
        self
    }

    /// The entry's path as given (without the trailing `/` added to directories).
    pub fn path(&self) -> &[u8] {
        &self.path
    }

    /// Appends this entry (its PAX / GNU long-name entries, header and padded contents) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut name = self.path.clone();
        if self.body == Body::Dir && !name.ends_with(b"/") {
            name.push(b'/');
        }
        let link: &[u8] = match &self.body {
            Body::Symlink(t) | Body::Hardlink(t) => t,
            _ => &[],
        };
        let contents: &[u8] = match &self.body {
            Body::File(c) => c,
            _ => &[],
        };
        let gnu = self.long_names == LongNames::Gnu
            || (self.big_numbers == BigNumbers::Base256 && self.long_names != LongNames::UstarPrefix);

        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let mut gnu_long: Vec<(u8, &[u8])> = Vec::new();
        let mut prefix: &[u8] = &[];
        let mut name_field: &[u8] = &name;
        if name.len() > 100 {
            name_field = &name[..100];
            match self.long_names {
                LongNames::Pax => pax.push(("path".into(), name.clone())),
                LongNames::Gnu => gnu_long.push((b'L', &name)),
                LongNames::UstarPrefix => match split_prefix(&name) {
                    Some((p, n)) => {
                        prefix = p;
                        name_field = n;
                    }
                    None => pax.push(("path".into(), name.clone())),
                },
            }
        }
        let mut link_field = link;
        if link.len() > 100 {
            link_field = &link[..100];
            match self.long_names {
                LongNames::Gnu => gnu_long.insert(0, (b'K', link)),
                LongNames::Pax | LongNames::UstarPrefix => pax.push(("linkpath".into(), link.to_vec())),
            }
        }

        let mut h = [0u8; BLOCK];
        put(&mut h[0..100], name_field);
        put_octal(&mut h[100..108], u64::from(self.mode));
        put_id(&mut h[108..116], self.uid, self.big_numbers, "uid", &mut pax);
        put_id(&mut h[116..124], self.gid, self.big_numbers, "gid", &mut pax);
        let size = contents.len() as u64;
        if size < 8u64.pow(11) {
            put_octal(&mut h[124..136], size);
        } else {
            put_octal(&mut h[124..136], 0);
            pax.push(("size".into(), size.to_string().into_bytes()));
        }
        put_octal(&mut h[136..148], self.mtime);
        if self.mtime_nsec != 0 {
            pax.push(("mtime".into(), format!("{}.{:09}", self.mtime, self.mtime_nsec).into_bytes()));
        }
        h[156] = self.body.typeflag();
        put(&mut h[157..257], link_field);
        put_magic(&mut h, gnu);
        put(&mut h[265..297], &self.uname);
        put(&mut h[297..329], &self.gname);
        if let Body::CharDevice { major, minor } | Body::BlockDevice { major, minor } = self.body {
            put_octal(&mut h[329..337], u64::from(major));
            put_octal(&mut h[337..345], u64::from(minor));
        }
        put(&mut h[345..500], prefix);

        for (k, v) in &self.xattrs {
            pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
        }
        pax.extend(self.pax.iter().cloned());

        if !pax.is_empty() {
            let data = pax_records(&pax);
            let mut pax_name = b"PaxHeaders/".to_vec();
            let (_, base) = split_last(name.strip_suffix(b"/").unwrap_or(&name));
            pax_name.extend_from_slice(&base[..base.len().min(80)]);
            let mut x = [0u8; BLOCK];
            put(&mut x[0..100], &pax_name);
            put_octal(&mut x[100..108], 0o644);
            put_octal(&mut x[108..116], 0);
            put_octal(&mut x[116..124], 0);
            put_octal(&mut x[124..136], data.len() as u64);
            put_octal(&mut x[136..148], self.mtime);
            x[156] = b'x';
            put_magic(&mut x, false);
            push_member(out, x, &data);
        }
        for (typeflag, long) in gnu_long {
            let mut data = long.to_vec();
            data.push(0);
            let mut l = [0u8; BLOCK];
            put(&mut l[0..100], b"././@LongLink");
            put_octal(&mut l[100..108], 0o644);
            put_octal(&mut l[108..116], 0);
            put_octal(&mut l[116..124], 0);
            put_octal(&mut l[124..136], data.len() as u64);
            put_octal(&mut l[136..148], 0);
            l[156] = typeflag;
            put_magic(&mut l, true);
            push_member(out, l, &data);
        }
        push_member(out, h, contents);
    }
}

/// Builds one uncompressed tar layer from [`Entry`]s, in order. The chaining methods are shorthands for
/// [`LayerBuilder::entry`] with default metadata.
#[derive(Clone, Debug, Default)]
pub struct LayerBuilder {
    out: Vec<u8>,
}

impl LayerBuilder {
    /// An empty layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an entry.
    pub fn entry(&mut self, entry: Entry) -> &mut Self {
        entry.write_to(&mut self.out);
        self
    }

    /// Appends a directory with default metadata.
    pub fn dir(&mut self, path: impl Into<Vec<u8>>) -> &mut Self {
        self.entry(Entry::dir(path))
    }

    /// Appends a regular file with default metadata.
    pub fn file(&mut self, path: impl Into<Vec<u8>>, contents: impl Into<Vec<u8>>) -> &mut Self {
        self.entry(Entry::file(path, contents))
    }

    /// Appends a symlink with default metadata.
    pub fn symlink(&mut self, path: impl Into<Vec<u8>>, target: impl Into<Vec<u8>>) -> &mut Self {
        self.entry(Entry::symlink(path, target))
    }

    /// Appends a hard link with default metadata.
    pub fn hardlink(&mut self, path: impl Into<Vec<u8>>, target: impl Into<Vec<u8>>) -> &mut Self {
        self.entry(Entry::hardlink(path, target))
    }

    /// Appends a FIFO with default metadata.
    pub fn fifo(&mut self, path: impl Into<Vec<u8>>) -> &mut Self {
        self.entry(Entry::fifo(path))
    }

    /// Appends a whiteout hiding `path` of lower layers.
    pub fn whiteout(&mut self, path: impl Into<Vec<u8>>) -> &mut Self {
        self.entry(Entry::whiteout(path))
    }

    /// Appends the opaque marker of `dir`.
    pub fn opaque(&mut self, dir: impl Into<Vec<u8>>) -> &mut Self {
        self.entry(Entry::opaque(dir))
    }

    /// Appends raw bytes as they are (for malformed-archive tests).
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.out.extend_from_slice(bytes);
        self
    }

    /// Bytes written so far, without the end-of-archive blocks.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Closes the archive with two zero blocks and returns it, leaving the builder empty.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.out);
        out.resize(out.len() + 2 * BLOCK, 0);
        out
    }
}

/// A `security.capability` xattr value in the VFS v2 format (20 bytes, little-endian): revision 2, the
/// effective flag, then the permitted and inheritable sets (low 32 bits, then high 32 bits).
pub fn capability_v2(permitted: u64, inheritable: u64, effective: bool) -> Vec<u8> {
    const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
    const VFS_CAP_FLAGS_EFFECTIVE: u32 = 0x1;
    let magic = VFS_CAP_REVISION_2 | if effective { VFS_CAP_FLAGS_EFFECTIVE } else { 0 };
    let mut v = Vec::with_capacity(20);
    for word in [magic, permitted as u32, inheritable as u32, (permitted >> 32) as u32, (inheritable >> 32) as u32] {
        v.extend_from_slice(&word.to_le_bytes());
    }
    v
}

/// Capability number of `CAP_NET_BIND_SERVICE`, for [`capability_v2`].
pub const CAP_NET_BIND_SERVICE: u32 = 10;
/// Capability number of `CAP_NET_RAW`, for [`capability_v2`].
pub const CAP_NET_RAW: u32 = 13;

fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// Splits `name` at a `/` into (prefix ≤ 155, name ≤ 100), as ustar allows.
fn split_prefix(name: &[u8]) -> Option<(&[u8], &[u8])> {
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    (0..trimmed.len())
        .filter(|&i| trimmed[i] == b'/')
        .find(|&i| i <= 155 && name.len() - i - 1 <= 100 && i > 0)
        .map(|i| (&name[..i], &name[i + 1..]))
}

fn put(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// Writes `value` as zero-padded octal digits followed by a NUL, filling the field.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    put(field, s.as_bytes());
    field[digits] = 0;
}

fn put_id(field: &mut [u8], value: u64, how: BigNumbers, key: &str, pax: &mut Vec<(String, Vec<u8>)>) {
    if value < 8u64.pow(field.len() as u32 - 1) {
        put_octal(field, value);
        return;
    }
    match how {
        BigNumbers::Pax => {
            put_octal(field, 0);
            pax.push((key.to_owned(), value.to_string().into_bytes()));
        }
        BigNumbers::Base256 => {
            let be = value.to_be_bytes();
            field.fill(0);
            let n = field.len();
            field[n - 7..].copy_from_slice(&be[1..]);
            field[0] = 0x80;
        }
    }
}

fn put_magic(h: &mut [u8; BLOCK], gnu: bool) {
    if gnu {
        h[257..265].copy_from_slice(b"ustar  \0");
    } else {
        h[257..265].copy_from_slice(b"ustar\x0000");
    }
}

/// Fills in the checksum and appends header + contents padded to a block.
fn push_member(out: &mut Vec<u8>, mut h: [u8; BLOCK], contents: &[u8]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(contents);
    let pad = (BLOCK - contents.len() % BLOCK) % BLOCK;
    out.resize(out.len() + pad, 0);
}

/// Encodes PAX records: `"<len> <key>=<value>\n"` where `<len>` counts the whole record.
fn pax_records(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let base = k.len() + v.len() + 3;
        let mut len = base + base.to_string().len();
        if len.to_string().len() != base.to_string().len() {
            len = base + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {k}=").as_bytes());
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let rec = pax_records(&[("path".into(), vec![b'a'; 5])]);
        assert_eq!(rec, b"14 path=aaaaa\n");
        // 3 + 4 + 92 = 99, +2 digits = 101 -> needs 3 digits: 102.
        let rec = pax_records(&[("path".into(), vec![b'a'; 92])]);
        assert_eq!(rec.len(), 102);
        assert!(rec.starts_with(b"102 path="));
    }

    #[test]
    fn checksum_and_octal_fields() {
        let tar = LayerBuilder::new().file("a", "hi").finish();
        assert_eq!(tar.len(), 4 * BLOCK);
        let h = &tar[..BLOCK];
        let stored = std::str::from_utf8(&h[148..154]).map(|s| u32::from_str_radix(s, 8));
        let mut copy = h.to_vec();
        copy[148..156].fill(b' ');
        let sum: u32 = copy.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(stored, Ok(Ok(sum)));
        assert_eq!(&h[124..136], b"00000000002\0");
        assert_eq!(&h[257..265], b"ustar\x0000");
    }

    #[test]
    fn base256_uid() {
        let tar =
            LayerBuilder::new().entry(Entry::file("a", "").owner(1 << 24, 5).big_numbers(BigNumbers::Base256)).finish();
        assert_eq!(&tar[108..116], &[0x80, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&tar[116..124], b"0000005\0");
        assert_eq!(&tar[257..265], b"ustar  \0");
    }

    #[test]
    fn whiteout_and_opaque_names() {
        assert_eq!(Entry::whiteout("a/b/c").path(), b"a/b/.wh.c");
        assert_eq!(Entry::whiteout("top").path(), b".wh.top");
        assert_eq!(Entry::opaque("a/b").path(), b"a/b/.wh..wh..opq");
    }

    #[test]
    fn ustar_prefix_split() {
        let name = format!("{}/{}", "d".repeat(60), "f".repeat(90));
        let (p, n) = split_prefix(name.as_bytes()).unwrap_or_default();
        assert_eq!(p.len(), 60);
        assert_eq!(n.len(), 90);
        assert!(split_prefix("x".repeat(120).as_bytes()).is_none());
    }

    #[test]
    fn capability_blob_layout() {
        let cap = capability_v2(1 << CAP_NET_BIND_SERVICE, 0, true);
        assert_eq!(cap.len(), 20);
        assert_eq!(&cap[0..4], &[1, 0, 0, 2]);
        assert_eq!(&cap[4..8], &[0, 4, 0, 0]);
    }
}

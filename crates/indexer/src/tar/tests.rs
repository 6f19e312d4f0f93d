//! Parser tests on archives written block by block, so every odd corner can be produced on purpose.

use super::*;

/// One header block, described field by field.
#[derive(Clone)]
pub(crate) struct Hdr {
    pub name: Vec<u8>,
    pub typeflag: u8,
    pub mode: u64,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: u64,
    pub linkname: Vec<u8>,
    pub magic: Magic,
    pub prefix: Vec<u8>,
    pub devmajor: u64,
    pub devminor: u64,
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Magic {
    Ustar,
    Gnu,
    V7,
}

impl Hdr {
    pub fn new(name: &[u8], typeflag: u8) -> Hdr {
        Hdr {
            name: name.to_vec(),
            typeflag,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 1_600_000_000,
            linkname: Vec::new(),
            magic: Magic::Ustar,
            prefix: Vec::new(),
            devmajor: 0,
            devminor: 0,
        }
    }

    pub fn block(&self) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[..self.name.len()].copy_from_slice(&self.name);
        octal(&mut b[100..108], self.mode);
        octal(&mut b[108..116], self.uid);
        octal(&mut b[116..124], self.gid);
        octal(&mut b[124..136], self.size);
        octal(&mut b[136..148], self.mtime);
        b[156] = self.typeflag;
        b[157..157 + self.linkname.len()].copy_from_slice(&self.linkname);
        match self.magic {
            Magic::Ustar => {
                b[257..263].copy_from_slice(b"ustar\0");
                b[263..265].copy_from_slice(b"00");
            }
            Magic::Gnu => {
                b[257..263].copy_from_slice(b"ustar ");
                b[263..265].copy_from_slice(b" \0");
            }
            Magic::V7 => {}
        }
        if self.magic != Magic::V7 {
            octal(&mut b[329..337], self.devmajor);
            octal(&mut b[337..345], self.devminor);
        }
        b[345..345 + self.prefix.len()].copy_from_slice(&self.prefix);
        set_checksum(&mut b);
        b
    }
}

/// Octal when it fits, GNU base-256 otherwise.
fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}\0", v, width = field.len() - 1);
    if s.len() == field.len() {
        field.copy_from_slice(s.as_bytes());
    } else {
        field.fill(0);
        let n = field.len();
        field[n - 8..].copy_from_slice(&v.to_be_bytes());
        field[0] |= 0x80;
    }
}

pub(crate) fn set_checksum(b: &mut [u8; BLOCK]) {
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    let s = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(s.as_bytes());
}

pub(crate) fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 2;
    let mut len = body + 1;
    while len != body + 1 + len.to_string().len() {
        len = body + 1 + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

/// An archive under construction.
#[derive(Default)]
pub(crate) struct Tar {
    pub buf: Vec<u8>,
}

impl Tar {
    pub fn raw(&mut self, block: [u8; BLOCK]) -> &mut Self {
        self.buf.extend_from_slice(&block);
        self
    }

    pub fn data(&mut self, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(data);
        let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
        self.buf.extend(std::iter::repeat_n(0, pad));
        self
    }

    /// A header and its data (size set from the data for files).
    pub fn entry(&mut self, mut h: Hdr, data: &[u8]) -> &mut Self {
        if !data.is_empty() {
            h.size = data.len() as u64;
        }
        self.raw(h.block()).data(data)
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(Hdr::new(name.as_bytes(), b'0'), data)
    }

    pub fn pax(&mut self, typeflag: u8, records: &[(&str, &[u8])]) -> &mut Self {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        self.entry(Hdr::new(b"PaxHeaders/x", typeflag), &data)
    }

    pub fn end(&mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&[0u8; 2 * BLOCK]);
        std::mem::take(&mut self.buf)
    }
}

fn parse(bytes: &[u8]) -> Result<Vec<TarEntry>, TarError> {
    TarReader::new(bytes).collect()
}

fn parse_err(bytes: &[u8]) -> TarError {
    parse(bytes).expect_err("the archive should be refused")
}

/// A reader that hands out one byte per call, like a decompressor with tiny output buffers.
struct Trickle<'a>(&'a [u8]);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() || buf.is_empty() {
            return Ok(0);
        }
        buf[0] = self.0[0];
        self.0 = &self.0[1..];
        Ok(1)
    }
}

#[test]
fn all_entry_kinds_and_offsets() {
    let mut t = Tar::default();
    let mut dir = Hdr::new(b"etc/", b'5');
    dir.mode = 0o1755;
    t.entry(dir, b"");
    let mut file = Hdr::new(b"etc/passwd", b'0');
    file.mode = 0o104_755;
    file.uid = 1000;
    file.gid = 100;
    t.entry(file, b"root:x:0:0\n");
    let mut sym = Hdr::new(b"etc/link", b'2');
    sym.linkname = b"../usr/lib/../x".to_vec();
    t.entry(sym, b"");
    let mut hard = Hdr::new(b"etc/hard", b'1');
    hard.linkname = b"./etc//passwd".to_vec();
    t.entry(hard, b"");
    let mut chr = Hdr::new(b"dev/null", b'3');
    chr.devmajor = 1;
    chr.devminor = 3;
    t.entry(chr, b"");
    let mut blk = Hdr::new(b"dev/sda", b'4');
    blk.devmajor = 8;
    t.entry(blk, b"");
    t.entry(Hdr::new(b"run/fifo", b'6'), b"");
    t.entry(Hdr::new(b"contig", b'7'), &[7u8; 600]);
    t.entry(Hdr::new(b"old", 0), b"abc");
    let bytes = t.end();
    let entries = parse(&bytes).unwrap();
    let kinds: Vec<_> = entries.iter().map(|e| e.kind).collect();
    use EntryKind::*;
    assert_eq!(kinds, [Dir, File, Symlink, HardLink, CharDevice, BlockDevice, Fifo, File, File]);
    assert_eq!(entries[0].path, b"etc");
    assert_eq!(entries[0].mode, 0o1755);
    let f = &entries[1];
    assert_eq!((f.mode, f.uid, f.gid, f.size), (0o4755, 1000, 100, 11));
    assert_eq!(f.mtime, Timestamp { sec: 1_600_000_000, nsec: 0 });
    assert_eq!(f.header_offset, 512);
    assert_eq!(&bytes[f.data_offset as usize..][..11], b"root:x:0:0\n");
    assert_eq!(entries[2].link_target, b"../usr/lib/../x", "symlink targets stay as written");
    assert_eq!(entries[3].link_target, b"etc/passwd", "hard-link targets are normalized");
    assert_eq!((entries[4].dev_major, entries[4].dev_minor), (1, 3));
    assert_eq!(entries[5].dev_major, 8);
    assert_eq!(&bytes[entries[7].data_offset as usize..][..600], &[7u8; 600][..]);
    assert_eq!(&bytes[entries[8].data_offset as usize..][..3], b"abc");
    for e in &entries[2..7] {
        assert_eq!(e.size, 0);
    }
}

#[test]
fn one_byte_reads_give_the_same_entries() {
    let mut t = Tar::default();
    t.pax(b'x', &[("path", &[b'p'; 300])]).file("ignored", b"hello").file("b", &[1u8; 1000]);
    let bytes = t.end();
    let whole = parse(&bytes).unwrap();
    let trickled: Vec<_> = TarReader::new(Trickle(&bytes)).collect::<Result<_, _>>().unwrap();
    assert_eq!(whole, trickled);
    assert_eq!(whole[0].path, vec![b'p'; 300]);
}

#[test]
fn every_pax_key() {
    let mut t = Tar::default();
    t.pax(
        b'x',
        &[
            ("path", "ünïcødé/dir/a-very-long-name-".repeat(8).as_bytes()),
            ("size", b"5"),
            ("uid", b"4294967295"),
            ("gid", b"3000000"),
            ("uname", b"someone"),
            ("gname", b"group"),
            ("mtime", b"1700000000.123456789"),
            ("atime", b"1.5"),
            ("ctime", b"2.5"),
            ("comment", b"hello"),
            ("SCHILY.xattr.security.capability", b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00"),
            ("SCHILY.xattr.user.eq", b"a=b\n=c"),
            ("SCHILY.xattr.user.empty", b""),
            ("LIBARCHIVE.xattr.user.other", b"dmFsdWU="),
            ("SCHILY.dev", b"12"),
        ],
    );
    let mut h = Hdr::new(b"short", b'0');
    h.size = 0; // PAX size wins
    t.raw(h.block()).data(b"12345");
    t.pax(b'x', &[("linkpath", &[b'l'; 200]), ("mtime", b"-1.25")]);
    let mut sym = Hdr::new(b"sym", b'2');
    sym.linkname = b"short-target".to_vec();
    t.entry(sym, b"");
    let bytes = t.end();
    let entries = parse(&bytes).unwrap();
    let f = &entries[0];
    assert_eq!(f.path, "ünïcødé/dir/a-very-long-name-".repeat(8).into_bytes());
    assert_eq!(f.size, 5);
    assert_eq!(&bytes[f.data_offset as usize..][..5], b"12345");
    assert_eq!((f.uid, f.gid), (u32::MAX, 3_000_000));
    assert_eq!(f.mtime, Timestamp { sec: 1_700_000_000, nsec: 123_456_789 });
    assert_eq!(f.header_offset, 0, "the entry starts at its PAX header");
    let names: Vec<&[u8]> = f.xattrs.iter().map(|x| x.name.as_slice()).collect();
    assert_eq!(names, [&b"security.capability"[..], b"user.eq"]);
    assert_eq!(f.xattrs[0].value, b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00");
    assert_eq!(f.xattrs[1].value, b"a=b\n=c");
    let s = &entries[1];
    assert_eq!(s.link_target, vec![b'l'; 200]);
    assert_eq!(s.mtime, Timestamp { sec: -2, nsec: 750_000_000 });
    assert_eq!(s.path, b"sym");
}

#[test]
fn pax_empty_value_keeps_header_field_and_last_header_wins() {
    let mut t = Tar::default();
    t.pax(b'x', &[("path", b"first"), ("uid", b"7")]);
    t.pax(b'x', &[("path", b""), ("gid", b"9")]);
    let mut h = Hdr::new(b"from-header", b'0');
    h.uid = 1;
    t.entry(h, b"");
    let e = &parse(&t.end()).unwrap()[0];
    assert_eq!(e.path, b"from-header");
    assert_eq!((e.uid, e.gid), (1, 9));
}

#[test]
fn pax_bad_values() {
    for (key, value) in [
        ("uid", &b"4294967296"[..]),
        ("gid", b"-1"),
        ("size", b"12x"),
        ("mtime", b"1.2.3"),
        ("size", b"99999999999999999999"),
    ] {
        let mut t = Tar::default();
        t.pax(b'x', &[(key, value)]).file("f", b"");
        let err = parse_err(&t.end());
        assert!(
            matches!(err, TarError::InvalidPax { offset: 0, .. } | TarError::NumberOutOfRange { offset: 1024, .. }),
            "{key}={value:?}: {err}"
        );
    }
    let mut t = Tar::default();
    t.entry(Hdr::new(b"pax", b'x'), b"10 path=x\n\0\0\0").file("f", b"");
    assert!(matches!(parse_err(&t.end()), TarError::InvalidPax { offset: 0, .. }));
}

#[test]
fn global_headers_are_checked_then_ignored() {
    let mut t = Tar::default();
    t.pax(b'g', &[("mtime", b"5"), ("comment", b"abc")]).file("f", b"x");
    let entries = parse(&t.end()).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].mtime.sec, 1_600_000_000);
    assert_eq!(entries[0].header_offset, 1024, "a global header is not part of the next entry");
    let mut t = Tar::default();
    t.entry(Hdr::new(b"g", b'g'), b"garbage");
    assert!(matches!(parse_err(&t.end()), TarError::InvalidPax { .. }));
}

/// A GNU archive: long name `L`, a base-256 file header with `uid` bytes, a long link `K` and its symlink.
fn gnu_archive(long_name: &[u8], long_link: &[u8], uid: [u8; 8]) -> Vec<u8> {
    let mut t = Tar::default();
    let mut l = Hdr::new(b"././@LongLink", b'L');
    l.magic = Magic::Gnu;
    t.entry(l, &[long_name, b"\0"].concat());
    let mut h = Hdr::new(&long_name[..100], b'0');
    h.magic = Magic::Gnu;
    let mut block = h.block();
    // base-256: gid 5, size 3, mtime -2.
    block[108..116].copy_from_slice(&uid);
    block[116..124].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 5]);
    block[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
    block[136..148].copy_from_slice(&[0xff; 12]);
    block[147] = 0xfe;
    // GNU atime/ctime live where ustar keeps its prefix: they must not be joined to the name.
    block[345..357].copy_from_slice(b"00000000001\0");
    set_checksum(&mut block);
    t.raw(block).data(b"xyz");
    let mut k = Hdr::new(b"././@LongLink", b'K');
    k.magic = Magic::Gnu;
    t.entry(k, long_link);
    let mut s = Hdr::new(b"sym", b'2');
    s.magic = Magic::Gnu;
    s.linkname = long_link[..100].to_vec();
    t.entry(s, b"");
    t.end()
}

#[test]
fn gnu_long_names_and_base256() {
    let long_name = [b"d/".repeat(60), b"file".to_vec()].concat();
    let long_link = b"t/".repeat(70);
    let bytes = gnu_archive(&long_name, &long_link, [0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    let entries = parse(&bytes).unwrap();
    let f = &entries[0];
    assert_eq!(f.path, long_name);
    assert_eq!(f.header_offset, 0);
    assert_eq!((f.uid, f.gid, f.size), (u32::MAX, 5, 3));
    assert_eq!(f.mtime.sec, -2);
    assert_eq!(&bytes[f.data_offset as usize..][..3], b"xyz");
    assert_eq!(entries[1].link_target, long_link);
    // uid 2^32 does not fit.
    let bytes = gnu_archive(&long_name, &long_link, [0x80, 0, 0, 1, 0, 0, 0, 0]);
    assert!(matches!(parse_err(&bytes), TarError::NumberOutOfRange { field: "uid", offset: 1024 }));
}

#[test]
fn empty_gnu_long_name_keeps_the_header_name() {
    let mut t = Tar::default();
    let mut l = Hdr::new(b"././@LongLink", b'L');
    l.magic = Magic::Gnu;
    t.entry(l, b"\0\0\0");
    t.file("plain", b"");
    assert_eq!(parse(&t.end()).unwrap()[0].path, b"plain");
}

#[test]
fn ustar_prefix_is_joined() {
    let mut t = Tar::default();
    let mut h = Hdr::new(b"name.txt", b'0');
    h.prefix = b"some/deep/prefix".to_vec();
    t.entry(h, b"hi");
    let e = &parse(&t.end()).unwrap()[0];
    assert_eq!(e.path, b"some/deep/prefix/name.txt");
}

#[test]
fn octal_fields_with_spaces_and_nuls() {
    let mut block = Hdr::new(b"f", b'0').block();
    block[100..108].copy_from_slice(b"  755 \0 ");
    block[108..116].copy_from_slice(b"\0\0\0\0\0\0\0\0");
    block[116..124].copy_from_slice(b"     12 ");
    block[124..136].copy_from_slice(b"00000000004 ");
    set_checksum(&mut block);
    let mut t = Tar::default();
    t.raw(block).data(b"abcd");
    let e = &parse(&t.end()).unwrap()[0];
    assert_eq!((e.mode, e.uid, e.gid, e.size), (0o755, 0, 0o12, 4));

    block[100..108].copy_from_slice(b"0007 55\0");
    set_checksum(&mut block);
    let mut t = Tar::default();
    t.raw(block).data(b"abcd");
    assert!(matches!(parse_err(&t.end()), TarError::InvalidNumber { field: "mode", offset: 0 }));
}

#[test]
fn checksums() {
    let mut t = Tar::default();
    t.file("a", b"").file("b", b"");
    let mut bytes = t.end();
    bytes[512 + 1] = b'c';
    match parse_err(&bytes) {
        TarError::BadChecksum { offset, .. } => assert_eq!(offset, 512),
        other => panic!("{other}"),
    }
    // Signed checksum (historic writers summing `char` on signed platforms) is accepted.
    let mut block = Hdr::new(b"\xe9t\xe9", b'0').block();
    let signed: i32 =
        block.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { i32::from(b as i8) }).sum();
    block[148..156].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
    let mut t = Tar::default();
    t.raw(block);
    assert_eq!(parse(&t.end()).unwrap()[0].path, b"\xe9t\xe9");
}

#[test]
fn truncation() {
    let mut t = Tar::default();
    t.file("a", &[1u8; 1000]);
    let bytes = t.end();
    // Mid-header.
    assert!(matches!(parse_err(&bytes[..300]), TarError::Truncated { offset: 0 }));
    // Mid-data and mid-padding.
    assert!(matches!(parse_err(&bytes[..512 + 700]), TarError::Truncated { offset: 1212 }));
    assert!(matches!(parse_err(&bytes[..512 + 1010]), TarError::Truncated { offset: 1522 }));
    // A second header cut short.
    let mut t = Tar::default();
    t.file("a", b"x").file("b", b"y");
    let bytes = t.end();
    assert!(matches!(parse_err(&bytes[..1024 + 100]), TarError::Truncated { offset: 1024 }));
    // End without the two zero blocks, or with just one: fine.
    assert_eq!(parse(&bytes[..2048]).unwrap().len(), 2);
    assert_eq!(parse(&bytes[..2048 + 512]).unwrap().len(), 2);
    assert_eq!(parse(&[]).unwrap().len(), 0);
    // A zero block followed by a header is corrupt; an extension header with no entry is truncated.
    let mut corrupt = bytes[..1024].to_vec();
    corrupt.extend_from_slice(&[0u8; 512]);
    corrupt.extend_from_slice(&bytes[1024..]);
    assert!(matches!(parse_err(&corrupt), TarError::ZeroBlockThenHeader { offset: 1536 }));
    let mut t = Tar::default();
    t.file("a", b"").pax(b'x', &[("path", b"x")]);
    assert!(matches!(parse_err(&t.end()), TarError::DanglingExtension { offset: 512 }));
}

#[test]
fn huge_extension_headers_are_refused_before_reading() {
    let mut h = Hdr::new(b"pax", b'x');
    h.size = 10 << 30;
    let mut t = Tar::default();
    t.raw(h.block());
    // Only the header is there: refusing must not depend on (or try) reading 10 GiB.
    assert!(matches!(parse_err(&t.buf), TarError::PaxTooLarge { offset: 0, size } if size == 10 << 30));
    let mut h = Hdr::new(b"././@LongLink", b'L');
    h.size = MAX_LONG_NAME + 1;
    let mut t = Tar::default();
    t.file("a", b"").raw(h.block());
    assert!(matches!(parse_err(&t.buf), TarError::LongNameTooLarge { offset: 512, .. }));
    // A file claiming 10 GiB is skipped, not buffered: the error is the missing data.
    let mut h = Hdr::new(b"big", b'0');
    h.size = 10 << 30;
    let mut t = Tar::default();
    t.raw(h.block()).data(b"only a little");
    assert!(matches!(parse_err(&t.buf), TarError::Truncated { .. }));
}

#[test]
fn unknown_and_sparse_types() {
    let mut t = Tar::default();
    t.entry(Hdr::new(b"volume", b'V'), b"");
    match parse_err(&t.end()) {
        TarError::UnsupportedType { path, typeflag, offset } => {
            assert_eq!((path.as_str(), typeflag, offset), ("volume", 'V', 0));
        }
        other => panic!("{other}"),
    }
    let mut t = Tar::default();
    t.file("a", b"").entry(Hdr::new(b"sparse", b'S'), b"");
    assert!(matches!(parse_err(&t.end()), TarError::Sparse { offset: 512 }));
    let mut t = Tar::default();
    t.pax(b'x', &[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")]).file("s", b"");
    assert!(matches!(parse_err(&t.end()), TarError::Sparse { offset: 0 }));
}

#[test]
fn unsafe_paths() {
    for name in ["../etc/passwd", "/etc/passwd", "a/../../b", "a/.."] {
        let mut t = Tar::default();
        t.file(name, b"");
        match parse_err(&t.end()) {
            TarError::UnsafePath { path, offset } => assert_eq!((path.as_str(), offset), (name, 0)),
            other => panic!("{name}: {other}"),
        }
    }
    let mut t = Tar::default();
    let mut h = Hdr::new(b"link", b'1');
    h.linkname = b"../../etc/shadow".to_vec();
    t.entry(h, b"");
    assert!(matches!(parse_err(&t.end()), TarError::UnsafePath { .. }));
    let mut t = Tar::default();
    t.pax(b'x', &[("path", b"/abs")]).file("x", b"");
    assert!(matches!(parse_err(&t.end()), TarError::UnsafePath { offset: 1024, .. }));
}

#[test]
fn root_entry() {
    let mut t = Tar::default();
    let mut root = Hdr::new(b"./", b'5');
    root.mode = 0o700;
    t.entry(root, b"").entry(Hdr::new(b".", b'5'), b"").entry(Hdr::new(b"./", 0), b"");
    let entries = parse(&t.end()).unwrap();
    assert!(entries.iter().all(|e| e.path.is_empty() && e.kind == EntryKind::Dir));
    assert_eq!(entries[0].mode, 0o700);
    let mut t = Tar::default();
    t.file("./", b"");
    assert!(matches!(parse_err(&t.end()), TarError::RootNotDir { kind: EntryKind::File, .. }));
}

#[test]
fn header_only_types_have_no_data() {
    // Like Go's reader, a directory's size field does not announce content.
    let mut t = Tar::default();
    let mut d = Hdr::new(b"d/", b'5');
    d.size = 512;
    t.raw(d.block()).file("f", b"after");
    let bytes = t.end();
    let entries = parse(&bytes).unwrap();
    assert_eq!(entries[0].size, 0);
    assert_eq!(entries[1].path, b"f");
    assert_eq!(entries[1].data_offset, 1024);
}

#[test]
fn out_of_range_numbers() {
    let mut block = Hdr::new(b"f", b'0').block();
    block[124..136].copy_from_slice(&[0xff; 12]); // size -1
    set_checksum(&mut block);
    let mut t = Tar::default();
    t.raw(block);
    assert!(matches!(parse_err(&t.end()), TarError::NumberOutOfRange { field: "size", .. }));
    let mut block = Hdr::new(b"f", b'0').block();
    block[124..136].copy_from_slice(&[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // 2^80
    set_checksum(&mut block);
    let mut t = Tar::default();
    t.raw(block);
    assert!(matches!(parse_err(&t.end()), TarError::NumberOutOfRange { field: "size", .. }));
    let mut h = Hdr::new(b"dev", b'3');
    h.devmajor = 1 << 33;
    let mut t = Tar::default();
    t.entry(h, b"");
    assert!(matches!(parse_err(&t.end()), TarError::NumberOutOfRange { field: "devmajor", .. }));
}

#[test]
fn fused_after_error_and_position() {
    let mut t = Tar::default();
    t.file("a", b"x");
    let good = t.end();
    let mut r = TarReader::new(&good[..]);
    assert!(r.next().unwrap().is_ok());
    assert_eq!(r.position(), 1024);
    assert!(r.next().is_none());
    assert_eq!(r.position(), 2048);
    assert!(r.next().is_none());
    let mut r = TarReader::new(&good[..700]);
    assert!(r.next().unwrap().is_err());
    assert!(r.next().is_none());
}

#[test]
fn agrees_with_the_tar_crate() {
    let mut builder = ::tar::Builder::new(Vec::new());
    let mut expected = Vec::new();
    for (i, name) in ["short", &"long-dir/".repeat(20), "ünï/cødé"].iter().enumerate() {
        let data = vec![i as u8; 700 * i + 3];
        let mut h = ::tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o640);
        h.set_uid(3_000_000);
        h.set_mtime(12345);
        h.set_entry_type(::tar::EntryType::Regular);
        let path = format!("{name}file{i}");
        builder.append_data(&mut h, &path, &data[..]).unwrap();
        expected.push((path, data));
    }
    let bytes = builder.into_inner().unwrap();
    let entries = parse(&bytes).unwrap();
    assert_eq!(entries.len(), expected.len());
    for (e, (path, data)) in entries.iter().zip(&expected) {
        assert_eq!(e.path, path.as_bytes());
        assert_eq!((e.mode, e.uid, e.mtime.sec), (0o640, 3_000_000, 12345));
        assert_eq!(&bytes[e.data_offset as usize..][..data.len()], &data[..]);
    }
}

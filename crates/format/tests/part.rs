//! Layer parts: what is written is what is read, byte for byte the same every time, and a damaged or
//! hostile part is refused with an error that says so.

use clip_format::*;

fn entry(path: &str, kind: EntryKind) -> TarEntry {
    TarEntry {
        path: path.as_bytes().to_vec(),
        kind,
        mode: 0o644,
        uid: 1000,
        gid: 3_000_000,
        size: 0,
        mtime: Timestamp { sec: -5, nsec: 999_999_999 },
        link_target: Vec::new(),
        dev_major: 0,
        dev_minor: 0,
        xattrs: Vec::new(),
        data_offset: 512,
        header_offset: 0,
    }
}

fn sample() -> LayerPart {
    sample_with(|_| {})
}

/// The sample part, its entries changed by `edit` first.
fn sample_with(edit: impl FnOnce(&mut Vec<TarEntry>)) -> LayerPart {
    let mut windows = Windows::new();
    let w1 = windows.push(&[7u8; 32 * 1024]).unwrap();
    let w2 = windows.push(b"a short window").unwrap();
    let mut file = entry("usr/bin/tool", EntryKind::File);
    file.size = 5000;
    file.data_offset = 1536;
    file.xattrs = vec![
        Xattr { name: b"user.b".to_vec(), value: b"2".to_vec() },
        Xattr { name: b"security.capability".to_vec(), value: vec![1, 0, 0, 2, 0xff] },
    ];
    let mut link = entry("usr/bin/same", EntryKind::HardLink);
    link.link_target = b"usr/bin/tool".to_vec();
    let mut sym = entry("lib", EntryKind::Symlink);
    sym.link_target = b"usr/lib".to_vec();
    let mut dev = entry("dev/null", EntryKind::CharDevice);
    (dev.dev_major, dev.dev_minor) = (1, 3);
    let entries = vec![
        entry("", EntryKind::Dir),
        entry("usr", EntryKind::Dir),
        file,
        link,
        sym,
        dev,
        entry("etc/.wh.old", EntryKind::File),
        entry("var/.wh..wh..opq", EntryKind::File),
        entry("run/fifo", EntryKind::Fifo),
        entry("dev/sda", EntryKind::BlockDevice),
    ];
    let mut entries = entries;
    edit(&mut entries);
    let spans = vec![
        SpanSpec {
            out_offset: 0,
            in_offset: 0,
            bits: 0,
            digest: Digest::from_sha256([1; 32]),
            window: WindowRef::default(),
        },
        SpanSpec { out_offset: 4096, in_offset: 900, bits: 3, digest: Digest::from_sha256([2; 32]), window: w1 },
        SpanSpec { out_offset: 8192, in_offset: 1800, bits: 7, digest: Digest::from_sha256([3; 32]), window: w2 },
    ];
    LayerPart {
        meta: PartMeta {
            digest: Digest::from_sha256([0xab; 32]),
            size: 4000,
            diff_id: Digest::from_sha256([0xcd; 32]),
            uncompressed_size: 10240,
            compression: Compression::Gzip,
            span_size: 4096,
        },
        entries: PartEntries::from_entries(&entries).unwrap(),
        spans,
        windows,
        chunks: Some(Chunks {
            chunk_size: 1024,
            counts: vec![2, 1, 1],
            chunks: (0..4u8).map(|i| ChunkDigest([i; CHUNK_DIGEST_LEN])).collect(),
            windows: vec![ChunkDigest::default(), ChunkDigest::of(b"w1"), ChunkDigest::of(b"w2")],
            roots: vec![SpanRoot::of(b"s0"), SpanRoot::of(b"s1"), SpanRoot::of(b"s2")],
        }),
        loads: PartLoads {
            bytecode: vec![ModuleImports {
                data_offset: 1536,
                version: (3, 11),
                imports: vec![
                    ModuleImport { name: "os.path".into(), level: 0, fromlist: vec![] },
                    ModuleImport { name: String::new(), level: 1, fromlist: vec!["sub".into()] },
                ],
            }],
            elf_files: vec![ElfNames {
                data_offset: 4096,
                class64: true,
                big_endian: false,
                machine: 62,
                needed: vec!["libz.so.1".into()],
                runpath: vec!["$ORIGIN/../lib".into()],
                rpath: vec![],
                interp: Some("/lib64/ld-linux-x86-64.so.2".into()),
            }],
            scripts: vec![ScriptLine { data_offset: 5120, line: "/usr/bin/env python3".into() }],
            loader_caches: vec![LoaderCache {
                data_offset: 6144,
                libraries: vec![("libc.so.6".into(), vec!["/lib/x86_64-linux-gnu/libc.so.6".into()])],
            }],
        },
    }
}

fn bytes(part: &LayerPart) -> Vec<u8> {
    let mut out = Vec::new();
    part.write(&mut out).unwrap();
    out
}

#[test]
fn a_part_reads_back_as_written_and_writes_the_same_bytes_again() {
    let part = sample();
    let first = bytes(&part);
    let back = LayerPart::from_bytes(&first).unwrap();
    assert_eq!(back.meta, part.meta);
    // xattrs come back sorted by name, as the tar parser reports them.
    let mut expected: Vec<TarEntry> = Vec::new();
    sample_with(|entries| expected = entries.clone());
    expected[2].xattrs.sort();
    assert_eq!(part.entries.iter().collect::<Vec<_>>(), expected, "entries are kept as pushed");
    assert_eq!(back.entries.iter().collect::<Vec<_>>(), expected);
    assert_eq!(back.entries.clone().into_iter().collect::<Vec<_>>(), expected);
    assert_eq!(back.entries.len(), expected.len());
    assert_eq!(back.spans, part.spans);
    assert_eq!(back.loads, part.loads);
    assert_eq!(back.windows.len(), part.windows.len());
    assert_eq!(bytes(&back), first, "a part read back writes the same bytes");
    assert_eq!(part.key(), format!("sha256-{}-s4096-v{PART_VERSION}", "ab".repeat(32)));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.part");
    std::fs::write(&path, &first).unwrap();
    assert_eq!(LayerPart::read(&path).unwrap().entries.iter().collect::<Vec<_>>(), expected);
}

#[test]
fn a_part_is_not_an_index_and_an_index_is_not_a_part() {
    let part = bytes(&sample());
    let Err(err) = Archive::from_bytes(part) else { panic!("a layer part opened as an index") };
    assert!(matches!(err, FormatError::LayerPart), "{err}");
    assert!(err.to_string().contains("layer part"), "{err}");
}

#[test]
fn a_damaged_part_is_refused() {
    let good = bytes(&sample());
    // Any flipped byte after the header is caught by a section checksum (or the table's).
    for at in [100, good.len() / 2, good.len() - 3] {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        assert!(LayerPart::from_bytes(&bad).is_err(), "byte {at} flipped went unnoticed");
    }
    assert!(LayerPart::from_bytes(&good[..good.len() - 1]).is_err());
}

#[test]
fn a_part_whose_entries_point_outside_the_layer_is_refused() {
    let part = sample_with(|entries| entries[2].data_offset = 10240 - 10);
    let err = LayerPart::from_bytes(&bytes(&part)).unwrap_err();
    assert!(matches!(err, FormatError::BadSize { .. }), "{err}");
    assert!(err.to_string().contains("entry 2 has data beyond the layer"), "{err}");

    let mut part = sample();
    part.spans[2].out_offset = 1; // before the span ahead of it
    let err = LayerPart::from_bytes(&bytes(&part)).unwrap_err();
    assert!(err.to_string().contains("span 2 is out of order"), "{err}");
}

#[test]
fn a_part_whose_recorded_loads_point_outside_its_layer_or_exceed_their_caps_is_refused() {
    let mut part = sample();
    part.loads.bytecode[0].data_offset = part.meta.uncompressed_size;
    let err = LayerPart::from_bytes(&bytes(&part)).unwrap_err();
    assert!(err.to_string().contains("LOAD"), "{err}");
    let mut part = sample();
    part.loads.elf_files[0].data_offset = u64::MAX;
    assert!(LayerPart::from_bytes(&bytes(&part)).is_err());
    let mut part = sample();
    part.loads.scripts[0].line = "x".repeat(MAX_SCRIPT_LINE + 1);
    assert!(LayerPart::from_bytes(&bytes(&part)).is_err(), "a script line longer than Linux reads");
    part.loads = PartLoads::default();
    let plain = LayerPart::from_bytes(&bytes(&part)).unwrap();
    assert!(plain.loads.is_empty(), "a part without CPython modules has no LOAD section");
}

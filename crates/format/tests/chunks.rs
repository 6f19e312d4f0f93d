//! Compressed-chunk digests (the lazy `CHNK` section): written and read back, looked up per span, left out of what a mount loads; an index or part without them still opens (readers then verify
//! whole spans), a damaged section is never used, and digests that do not fit the layers are refused.

use clip_format::*;

/// Where layer 0's second span starts in the blob.
const SPAN1: u64 = CHUNK_SIZE / 2;
const SIZES: [u64; 2] = [SPAN1 + 2 * CHUNK_SIZE + 10, 100];

fn layer(i: u8, size: u64, first_span: u32, span_count: u32) -> LayerMeta {
    LayerMeta {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        digest: Digest::from_sha256([i; 32]),
        size,
        diff_id: None,
        uncompressed_size: size * 3,
        compression: Compression::Gzip,
        first_span: SpanId(first_span),
        span_count,
    }
}

/// Two layers, three spans (the second with a window): layer 0's spans start at 10 and half a chunk, so the
/// first has 1 chunk and the second 3 (2 chunk sizes and 10 bytes); layer 1's one span has 1.
fn contents(chunks: Option<Chunks>) -> IndexContents {
    let mut windows = Windows::new();
    let span = |out_offset, in_offset, window| SpanSpec {
        out_offset,
        in_offset,
        bits: 0,
        digest: Digest::from_sha256([out_offset as u8; 32]),
        window,
    };
    let spans = vec![
        span(0, 10, WindowRef::default()),
        span(100_000, SPAN1, windows.push(b"window").unwrap()),
        span(0, 0, WindowRef::default()),
    ];
    let root = NodeSpec {
        mode: mode::S_IFDIR | 0o755,
        uid: 0,
        gid: 0,
        mtime: Timestamp::default(),
        xattrs: vec![],
        content: Content::Dir(vec![]),
    };
    let meta = ImageMeta { layers: vec![layer(1, SIZES[0], 0, 2), layer(2, SIZES[1], 2, 1)], ..ImageMeta::default() };
    IndexContents { kind: ArchiveKind::IndexOnly, meta, nodes: vec![root], spans, windows, chunks, tree: None }
}

fn digests() -> Chunks {
    Chunks {
        chunk_size: CHUNK_SIZE,
        counts: vec![1, 3, 1],
        chunks: (0..5u8).map(|i| ChunkDigest([i + 1; CHUNK_DIGEST_LEN])).collect(),
        windows: vec![ChunkDigest::default(), ChunkDigest::of_window(b"window"), ChunkDigest::default()],
        roots: vec![SpanRoot::of(b"a"), SpanRoot::of(b"b"), SpanRoot::of(b"")],
    }
}

fn write(c: &IndexContents) -> Vec<u8> {
    let mut out = Vec::new();
    write_index(c, &mut out).unwrap();
    out
}

#[test]
fn chunk_digests_read_back_per_layer_and_span_and_stay_out_of_the_mounted_part() {
    let with = Archive::from_bytes(write(&contents(Some(digests())))).unwrap();
    let without = Archive::from_bytes(write(&contents(None))).unwrap();
    // One more section table entry, nothing else: the digests are not loaded at open.
    assert_eq!(with.mounted_size(), without.mounted_size() + layout::SECTION_ENTRY_LEN as u64);
    let table = with.chunk_table().expect("the index has chunk digests");
    assert_eq!(table.chunk_size(), CHUNK_SIZE);
    let c = table.span_chunks(SpanId(1), SPAN1, SIZES[0]).expect("span 1 has chunks");
    assert_eq!((c.start, c.end, c.size, c.count), (SPAN1, SIZES[0], CHUNK_SIZE, 3));
    for j in 0..3u8 {
        assert_eq!(table.digest(&c, u64::from(j)), Some(ChunkDigest([j + 2; CHUNK_DIGEST_LEN])));
    }
    assert_eq!(table.digest(&c, 3), None, "span 1 has 3 chunks");
    let last = table.span_chunks(SpanId(2), 0, SIZES[1]).unwrap();
    assert_eq!(table.digest(&last, 0), Some(ChunkDigest([5; CHUNK_DIGEST_LEN])));
    // Bounds the count does not fit (its last chunk would be empty) give none.
    assert_eq!(table.span_chunks(SpanId(1), SPAN1, SPAN1 + 2 * CHUNK_SIZE), None);
    assert_eq!(table.span_chunks(SpanId(3), 0, 1), None);

    // Where a prefix ends, and the chunks a fetched prefix is checked against.
    assert_eq!(c.end_covering(SPAN1), SPAN1);
    assert_eq!(c.end_covering(SPAN1 + 1), SPAN1 + CHUNK_SIZE);
    assert_eq!(c.end_covering(SPAN1 + CHUNK_SIZE), SPAN1 + CHUNK_SIZE);
    assert_eq!(c.end_covering(SPAN1 + 2 * CHUNK_SIZE + 1), SIZES[0], "the last chunk takes the rest");
    assert_eq!(c.end_covering(u64::MAX), SIZES[0]);
    let pieces: Vec<_> = c.pieces(SPAN1 + CHUNK_SIZE, 2 * CHUNK_SIZE).unwrap().collect();
    let second = SPAN1 + CHUNK_SIZE..SPAN1 + 2 * CHUNK_SIZE;
    assert_eq!(pieces, vec![(1, second), (2, SPAN1 + 2 * CHUNK_SIZE..SIZES[0])]);
    assert!(c.pieces(90_001, 10).is_none(), "not where a chunk starts");
    assert!(c.pieces(SIZES[0], 10).is_none(), "past the last chunk");
    assert_eq!(table.window(SpanId(1)), Some(ChunkDigest::of_window(&with.window(SpanId(1)).unwrap())));
    assert_eq!(table.window(SpanId(0)), Some(ChunkDigest::default()));
    assert_eq!(table.window(SpanId(3)), None);
    assert_eq!(table.root(SpanId(1)), Some(SpanRoot::of(b"b")));
    assert_eq!(table.root(SpanId(3)), None);
    assert!(without.chunk_table().is_none(), "an index written without digests has none");

    // A section without roots (as clips before them wrote) reads, and has none.
    let old = Archive::from_bytes(write(&contents(Some(Chunks { roots: Vec::new(), ..digests() })))).unwrap();
    let table = old.chunk_table().expect("a section without roots still reads");
    assert_eq!(table.window(SpanId(1)), Some(ChunkDigest::of_window(&old.window(SpanId(1)).unwrap())));
    assert_eq!(table.root(SpanId(1)), None);
}

#[test]
fn a_span_root_commits_to_its_leaves_and_its_length() {
    let bytes: Vec<u8> = (0..(2 * TREE_LEAF + 5)).map(|i| (i % 251) as u8).collect();
    let leaves = leaf_digests(&bytes);
    assert_eq!(leaves.len() as u64, SpanRoot::leaves(bytes.len() as u64));
    assert_eq!(leaves.len(), 3, "two whole leaves and the rest");
    assert_eq!(SpanRoot::of(&bytes), SpanRoot::of_leaves(bytes.len() as u64, &leaves));
    let mut changed = bytes.clone();
    changed[TREE_LEAF as usize + 7] ^= 1;
    assert_ne!(SpanRoot::of(&changed), SpanRoot::of(&bytes));
    assert_ne!(SpanRoot::of_leaves(bytes.len() as u64 + 1, &leaves), SpanRoot::of(&bytes));
    assert_eq!(SpanRoot::leaves(0), 0);
}

#[test]
fn a_damaged_chunk_section_is_never_used_and_the_index_still_opens() {
    let good = write(&contents(Some(digests())));
    let archive = Archive::from_bytes(good.clone()).unwrap();
    let chnk = *archive.section(layout::SEC_CHNK).unwrap();
    assert_ne!(chnk.flags & layout::FLAG_LAZY, 0);
    for at in [chnk.offset, chnk.offset + chnk.stored_len / 2, chnk.offset + chnk.stored_len - 1] {
        let mut bad = good.clone();
        bad[at as usize] ^= 0x10;
        let archive = Archive::from_bytes(bad).expect("a lazy section is not checked at open");
        assert!(archive.chunk_table().is_none(), "byte {at} flipped: the damaged digests were used");
        assert_eq!(archive.window(SpanId(1)).unwrap(), b"window", "the rest of the index reads as before");
    }
}

#[test]
fn digests_that_do_not_fit_the_layers_are_refused() {
    let mut short = digests();
    short.chunks.pop();
    let err = write_index(&contents(Some(short)), &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("4 chunk digests"), "{err}");
    let mut windows = digests();
    windows.windows.pop();
    assert!(write_index(&contents(Some(windows)), &mut Vec::new()).is_err());
}

fn part(chunks: Option<Chunks>) -> LayerPart {
    let c = contents(None);
    let meta = PartMeta {
        digest: Digest::from_sha256([1; 32]),
        size: SIZES[0],
        diff_id: Digest::from_sha256([2; 32]),
        uncompressed_size: SIZES[0] * 3,
        compression: Compression::Gzip,
        span_size: 1 << 20,
    };
    LayerPart {
        meta,
        entries: PartEntries::default(),
        spans: c.spans[..2].to_vec(),
        windows: c.windows,
        chunks,
        loads: PartLoads::default(),
    }
}

fn part_bytes(p: &LayerPart) -> Vec<u8> {
    let mut out = Vec::new();
    p.write(&mut out).unwrap();
    out
}

#[test]
fn a_part_carries_its_digests_and_one_without_them_still_reads() {
    let mut d = digests();
    d.counts.truncate(2);
    d.chunks.truncate(4);
    d.windows.truncate(2);
    d.roots.truncate(2);
    let written = part_bytes(&part(Some(d.clone())));
    assert_eq!(LayerPart::from_bytes(&written).unwrap().chunks, Some(d.clone()));
    assert_eq!(LayerPart::from_bytes(&part_bytes(&part(None))).unwrap().chunks, None, "an older part");

    // Damaged digests (the part's last section) are refused by the section checksum, never used.
    let mut bad = written.clone();
    let at = bad.len() - 5;
    bad[at] ^= 1;
    let err = LayerPart::from_bytes(&bad).unwrap_err();
    assert!(err.to_string().contains("CHNK"), "{err}");

    // Parts assemble into an index whose digests are theirs, layer after layer.
    let mut all = Chunks::new(CHUNK_SIZE);
    assert!(all.append(&d));
    assert!(!all.append(&Chunks::new(CHUNK_SIZE * 2)), "chunks of another size do not mix");
    assert_eq!(all, d);
}

#[test]
fn every_span_of_a_long_layer_finds_its_own_digests() {
    // 200 spans of one layer with 1 to 3 chunks each: the lookup keeps sums every few dozen spans, so spans
    // on both sides of every kept sum must still find their own first digest.
    let n = 200u32;
    let counts: Vec<u16> = (0..n).map(|i| (i % 3 + 1) as u16).collect();
    let starts: Vec<u64> =
        counts.iter().scan(0, |at, &c| Some(std::mem::replace(at, *at + u64::from(c) * CHUNK_SIZE))).collect();
    let size = starts[n as usize - 1] + u64::from(counts[n as usize - 1]) * CHUNK_SIZE;
    let mut c = contents(None);
    c.meta.layers = vec![layer(1, size, 0, n)];
    c.spans = (0..n)
        .map(|i| SpanSpec {
            out_offset: u64::from(i) * CHUNK_SIZE,
            in_offset: starts[i as usize],
            bits: 0,
            digest: Digest::from_sha256([i as u8; 32]),
            window: WindowRef::default(),
        })
        .collect();
    let digest_of = |span: u32, j: u16| {
        let mut d = [0u8; CHUNK_DIGEST_LEN];
        d[..4].copy_from_slice(&span.to_le_bytes());
        d[4..6].copy_from_slice(&j.to_le_bytes());
        ChunkDigest(d)
    };
    c.chunks = Some(Chunks {
        chunk_size: CHUNK_SIZE,
        counts: counts.clone(),
        chunks: (0..n).flat_map(|i| (0..counts[i as usize]).map(move |j| digest_of(i, j))).collect(),
        windows: vec![ChunkDigest::default(); n as usize],
        roots: Vec::new(),
    });
    let archive = Archive::from_bytes(write(&c)).unwrap();
    let table = archive.chunk_table().unwrap();
    for i in 0..n {
        let end = starts.get(i as usize + 1).copied().unwrap_or(size);
        let sc = table.span_chunks(SpanId(i), starts[i as usize], end).unwrap();
        assert_eq!(sc.count, u64::from(counts[i as usize]), "span {i}");
        for j in 0..counts[i as usize] {
            assert_eq!(table.digest(&sc, u64::from(j)), Some(digest_of(i, j)), "span {i} chunk {j}");
        }
    }
}

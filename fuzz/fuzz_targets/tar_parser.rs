//! Fuzzes the streaming tar parser and the layer merge: any bytes give entries or an error, never a panic.
#![no_main]

use clip_indexer::merge::Merger;
use clip_indexer::tar::TarReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut entries = Vec::new();
    for entry in TarReader::new(data) {
        match entry {
            Ok(e) => entries.push(e),
            Err(_) => return,
        }
        if entries.len() > 10_000 {
            return;
        }
    }
    let mut merger = Merger::new();
    if merger.apply_layer(0, entries.clone()).is_ok() && merger.apply_layer(1, entries).is_ok() {
        let nodes = merger.finish();
        let contents = clip_format::IndexContents {
            kind: clip_format::ArchiveKind::IndexOnly,
            meta: Default::default(),
            nodes,
            spans: vec![],
            windows: clip_format::Windows::new(),
            chunks: None,
        };
        let mut out = Vec::new();
        // The merge's output must always be a tree the writer accepts.
        clip_format::write_index(&contents, &mut out).expect("merged tree is writable");
    }
});

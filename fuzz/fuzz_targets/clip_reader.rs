//! Fuzzes the `.clip` reader: any bytes must open with an error or give an archive whose every accessor
//! answers without panicking.
//!
//! Mutated bytes almost never carry valid checksums, so before parsing, the target writes the magic and
//! recomputes the crc32c of every section that lies inside the input, of the section table and of the
//! header (see crates/format/src/layout.rs): mutations reach the decoders behind the checks. (The checks
//! themselves are covered by the format crate's unit tests.)
#![no_main]

use clip_format::{Archive, Ino, NodeKind};
use libfuzzer_sys::fuzz_target;

#[path = "common/checksums.rs"]
mod checksums;
use checksums::fix_checksums;

fuzz_target!(|data: &[u8]| {
    let mut data = data.to_vec();
    fix_checksums(&mut data);
    let Ok(archive) = Archive::from_bytes(data) else { return };
    let _ = archive.meta();
    for i in 0..archive.node_count().min(10_000) {
        let Ok(node) = archive.node(Ino::from_index(i)) else { continue };
        let _ = archive.xattrs(&node);
        match node.kind() {
            NodeKind::Dir => {
                for child in archive.children(&node).take(1000) {
                    if let Ok((name, _)) = child {
                        let _ = archive.lookup(&node, name);
                    }
                }
            }
            NodeKind::Symlink => {
                let _ = archive.symlink_target(&node);
            }
            NodeKind::File => {
                if let Some(d) = node.data_ref() {
                    if let Ok(span) = archive.find_span(d.layer, d.offset) {
                        let _ = archive.span_range(d.layer, span);
                        let _ = archive.window(span);
                    }
                }
            }
            _ => {}
        }
    }
    let _ = archive.resolve(b"/usr/bin/../lib/x");
});

//! Fuzzes the `.clip` reader: any bytes must open with an error or give an archive whose every accessor
//! answers without panicking.
#![no_main]

use clip_format::{Archive, Ino, NodeKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(archive) = Archive::from_bytes(data.to_vec()) else { return };
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

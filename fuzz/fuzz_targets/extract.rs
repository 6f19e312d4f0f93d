//! Fuzzes `clip extract` itself: any bytes that open as a `.clip` file are extracted into a fresh
//! directory, their file data served from the input's own `DATA` section (whatever kind the header
//! claims). Extraction must end with the tree or an error: never a panic, a hang, an allocation sized
//! only by what the index claims, or a write outside the target.
//!
//! Checksums are recomputed first (as in `clip_reader`), so mutations reach the extract code behind them.
//! Run it as an unprivileged user if device nodes and setuid files in the temp directory matter.
#![no_main]

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use clip_image::{extract, Opened};
use clip_format::layout::SEC_DATA;
use clip_format::Archive;
use clip_store::{ContentStore, LayerBlobs, StoreConfig, StoreError};
use futures::future::BoxFuture;
use libfuzzer_sys::fuzz_target;

#[path = "common/checksums.rs"]
mod checksums;
use checksums::fix_checksums;

/// Every layer read from the input's `DATA` section (empty when it has none).
struct InputData(Bytes);

impl LayerBlobs for InputData {
    fn read(&self, layer: u32, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, StoreError>> {
        Box::pin(async move {
            let len = self.0.len() as u64;
            if range.start > range.end || range.end > len {
                return Err(StoreError::OutOfRange { layer, range, len });
            }
            Ok(self.0.slice(range.start as usize..range.end as usize))
        })
    }

    fn describe(&self) -> String {
        "fuzz input".into()
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime"))
}

fuzz_target!(|data: &[u8]| {
    let mut data = data.to_vec();
    fix_checksums(&mut data);
    let Ok(archive) = Archive::from_bytes(data.clone()) else { return };
    let section = archive.section(SEC_DATA).map(|s| s.offset as usize..(s.offset + s.stored_len) as usize);
    let bytes = section.and_then(|r| data.get(r)).map(Bytes::copy_from_slice).unwrap_or_default();
    let archive = Arc::new(archive);
    let store = Arc::new(ContentStore::new(archive.clone(), Arc::new(InputData(bytes)), StoreConfig::default()));
    let opened = Opened { archive, store, source: None, data_object: None };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let target = dir.path().join("rootfs");
    let _ = runtime().block_on(extract(&opened, &target, None));
    // Nothing beside the target.
    let beside: Vec<_> = std::fs::read_dir(dir.path()).expect("listing").map(|e| e.expect("entry").file_name()).collect();
    assert!(beside.iter().all(|n| n == "rootfs"), "extract wrote beside its target: {beside:?}");
});

//! `clip archive`: pack a root filesystem directory into a data-carrying archive, locally or in S3, and
//! report the throughput.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clip_image::{archive, ArchiveOptions, DataCompression, Location, PackConfig};

use crate::args::ArchiveArgs;
use crate::commands::progress::{self, TransferBar};

pub async fn run(a: ArchiveArgs, quiet: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    // File data is staged next to a local output (it is copied into it); for S3, in the temp directory.
    let scratch_dir = match &a.output {
        Location::Local(p) => {
            p.parent().filter(|d| !d.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), PathBuf::from)
        }
        Location::S3(_) => std::env::temp_dir(),
    };
    let compression = if a.compress { DataCompression::Zstd { level: 3 } } else { DataCompression::None };
    let opts = ArchiveOptions {
        pack: PackConfig { span_size: a.span_mib << 20, compression, scratch_dir },
        index_out: a.index_out.clone(),
        s3: a.s3.options(),
    };
    let bar = progress::enabled(quiet).then(|| Arc::new(TransferBar::new()));
    let report = archive(&a.rootfs, &a.output, &opts, bar.clone().map(|b| b as _))
        .await
        .with_context(|| format!("archiving {} into {}", a.rootfs.display(), a.output))?;
    if let Some(b) = bar {
        b.finish();
    }
    if !quiet {
        let s = report.summary;
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "archived {} ({} entries, {} files, {} bytes of data in {} spans, stored as {} bytes) into {} ({} bytes) in {secs:.1}s: {:.1} MB/s",
            a.rootfs.display(),
            s.entries,
            s.files,
            s.data_bytes,
            s.spans,
            s.stored_bytes,
            a.output,
            report.archive_size,
            s.data_bytes as f64 / 1e6 / secs.max(1e-9),
        );
        if let (Some(out), Some(size)) = (&a.index_out, report.index_size) {
            eprintln!("metadata copy {} ({size} bytes) reads its data from {}", out.display(), a.output);
        }
    }
    Ok(())
}

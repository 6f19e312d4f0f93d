//! `clip push`: upload a .clip file to S3.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use crate::args::PushArgs;
use crate::commands::progress::{self, TransferBar};

pub async fn run(a: PushArgs, quiet: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let bar = progress::enabled(quiet).then(|| Arc::new(TransferBar::new()));
    let size = clip_image::push(&a.file, &a.url, &a.s3.options(), bar.as_deref().map(|b| b as _))
        .await
        .with_context(|| format!("pushing to {}", a.url))?;
    if let Some(b) = bar {
        b.finish();
    }
    if !quiet {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "pushed {} ({size} bytes) to {} in {secs:.1}s: {:.1} MB/s",
            a.file.display(),
            a.url,
            size as f64 / 1e6 / secs.max(1e-9)
        );
    }
    Ok(())
}

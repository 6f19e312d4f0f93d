//! `clip extract`: write the image's root filesystem into a directory.

use std::time::Instant;

use anyhow::Context;
use clip_image::{extract, open_archive, OpenOptions};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::ExtractArgs;
use crate::commands::progress;

pub async fn run(a: ExtractArgs, quiet: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut opts = OpenOptions { s3: a.s3.options(), ..OpenOptions::default() };
    opts.source.plain_http = a.source.plain_http;
    let (file, _view) = super::viewed(&a.file, a.layer.view(), &a.layer.parts, &opts).await?;
    let opened = open_archive(&file, &opts).await?;
    let bar = progress::enabled(quiet).then(|| {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b
    });
    let report = |files: u64, bytes: u64| {
        if let Some(b) = &bar {
            b.set_message(format!("{files} files, {} MiB", bytes >> 20));
        }
    };
    let stats = extract(&opened, &a.dir, Some(&report)).await.with_context(|| format!("extracting {}", a.file))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if !quiet {
        eprintln!(
            "extracted {} entries ({} files, {} bytes) into {} in {:.1}s",
            stats.entries,
            stats.files,
            stats.bytes,
            a.dir.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

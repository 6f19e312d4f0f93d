//! `clip index`: resolve the image, then [`clip_image::index_to_file`] (its layers streamed once, the .clip
//! file written atomically, never over a device or FIFO), and publish it with `--push` (with the layer parts
//! kept in the part directory). Layers whose parts
//! are in the part directory (`--parts`) are not read unless `--no-reuse`; the summary says which were.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clip_indexer::IndexOptions;
use clip_source::{ImageRef, Platform, SourceOptions};

use crate::args::IndexArgs;
use crate::commands::progress;

pub async fn run(a: IndexArgs, quiet: bool) -> anyhow::Result<()> {
    if a.timeout.is_zero() {
        return index(a, quiet).await;
    }
    let limit = a.timeout;
    let image = a.image.clone();
    match tokio::time::timeout(limit, index(a, quiet)).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!(
            "indexing {image} did not finish within {} s (--timeout); is the registry reachable and serving at a \
             usable rate? (raise --timeout for very large images on slow links)",
            limit.as_secs_f64()
        ),
    }
}

async fn index(a: IndexArgs, quiet: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    // An output that would be refused is refused before the image is read.
    clip_image::check_output(&a.output).with_context(|| format!("writing {}", a.output.display()))?;
    let reference: ImageRef = a.image.parse().with_context(|| format!("parsing image reference {:?}", a.image))?;
    let mut opts = SourceOptions { plain_http: a.source.plain_http, ..Default::default() };
    if let Some(p) = &a.platform {
        opts.platform = p.parse::<Platform>().with_context(|| format!("parsing --platform {p:?}"))?;
    }
    let (image, source) =
        clip_source::open(&reference, &opts).await.with_context(|| format!("resolving {reference}"))?;
    let bars = progress::enabled(quiet).then(|| Arc::new(progress::LayerBars::default()));
    let outcomes = Arc::new(progress::LayerOutcomes::new(bars));
    let index_opts = IndexOptions {
        span_size: a.span_mib.saturating_mul(1 << 20),
        max_ratio: a.max_ratio,
        progress: Some(outcomes.clone()),
        parts: Some(Arc::new(a.parts.store())),
        reuse: !a.no_reuse,
        ..Default::default()
    };
    let out = &a.output;
    // The error names the image (indexing) or the file (writing).
    let written = clip_image::index_to_file(&a.image, &image, source, &index_opts, out).await?;

    let image_size: u64 = image.layers.iter().map(|l| l.size).sum();
    if !quiet {
        eprintln!(
            "indexed {reference} ({}) in {:.1}s: {}, {} inodes, {} spans, {} startup files; index {} bytes = {:.3}% of {} compressed bytes -> {}",
            image.manifest_digest,
            started.elapsed().as_secs_f64(),
            outcomes.summary(written.layers),
            written.inodes,
            written.spans,
            written.startup_files,
            written.size,
            100.0 * written.size as f64 / image_size.max(1) as f64,
            image_size,
            out.display()
        );
    }
    if a.push {
        let published = clip_image::publish_index(&a.image, out, &a.parts.store(), &opts)
            .await
            .with_context(|| format!("publishing {} to {reference}", out.display()))?;
        if !quiet {
            let how = match &published.referrers_tag {
                Some(tag) => format!("referrers tag {tag}"),
                None => "referrers API".to_owned(),
            };
            eprintln!("published index {} for {} ({how})", published.artifact, published.subject);
        }
    }
    Ok(())
}

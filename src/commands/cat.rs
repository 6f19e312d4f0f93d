//! `clip cat`: print one file, fetching only the spans it covers.

use std::io::Write;

use anyhow::{bail, Context};
use clip_format::NodeKind;
use clip_image::{open_archive, OpenOptions};

use crate::args::CatArgs;

pub async fn run(a: CatArgs) -> anyhow::Result<()> {
    let mut opts = OpenOptions { s3: a.s3.options(), ..OpenOptions::default() };
    opts.source.plain_http = a.source.plain_http;
    let opened = open_archive(&a.file, &opts).await?;
    let archive = &opened.archive;
    let Some(ino) = archive.resolve(a.path.as_bytes())? else {
        bail!("{}: no such file in {}", a.path, a.file);
    };
    let node = archive.node(ino)?;
    let Some(data) = node.data_ref() else {
        bail!("{}: not a regular file ({:?})", a.path, node.kind());
    };
    debug_assert_eq!(node.kind(), NodeKind::File);
    let mut out = crate::output::stdout();
    let chunk = 4 << 20;
    let mut offset = 0;
    while offset < data.size {
        let bytes = opened.store.read(data, offset, chunk).await.with_context(|| format!("reading {}", a.path))?;
        out.write_all(&bytes)?;
        offset += bytes.len() as u64;
        if bytes.is_empty() {
            break;
        }
    }
    out.flush()?;
    let stats = opened.store.stats();
    tracing::info!(spans = stats.spans_fetched, bytes = stats.bytes_fetched, "fetched");
    Ok(())
}

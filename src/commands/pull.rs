//! `clip pull`: make an image ready (index + shared mount) and print its root filesystem path.

use std::io::Write;

use anyhow::Context;

use crate::args::PullArgs;
use crate::commands::node;

pub async fn run(a: PullArgs, quiet: bool) -> anyhow::Result<()> {
    let node = node(&a.node)?;
    let pulled = node.pull(&a.image).await.with_context(|| format!("pulling {}", a.image))?;
    if !quiet {
        eprintln!(
            "{} ({}): index {} ({}), clip v{}",
            a.image,
            pulled.index.manifest_digest,
            pulled.index.path.display(),
            pulled.index.origin,
            pulled.version
        );
        if let Some(reason) = &pulled.fallback {
            eprintln!("fell back to clip v1 ({} fallback(s) on this node): {reason}", node.fallbacks());
        }
    }
    let mut out = crate::output::stdout();
    writeln!(out, "{}", pulled.rootfs.display())?;
    out.flush()?;
    Ok(())
}

//! `clip profile push`: publish a recorded prefetch profile next to its image in the registry.

use anyhow::Context;
use clip_source::SourceOptions;

use crate::args::ProfileCommand;

pub async fn run(c: ProfileCommand, quiet: bool) -> anyhow::Result<()> {
    match c {
        ProfileCommand::Push { image, file, source } => {
            let opts = SourceOptions { plain_http: source.plain_http, ..SourceOptions::default() };
            let published = clip_node::publish_profile(&image, &file, &opts)
                .await
                .with_context(|| format!("publishing {} for {image}", file.display()))?;
            if !quiet {
                eprintln!("published profile {} for {}", published.artifact, published.subject);
            }
        }
    }
    Ok(())
}

//! One module per subcommand; each turns its arguments into library calls and prints the result.

mod archive;
mod cat;
mod config;
mod extract;
mod gc;
mod index;
mod inspect;
mod ls;
mod mount;
mod profile;
mod progress;
mod pull;
mod push;
mod run;
pub mod snapshotter;

use std::process::ExitCode;

use anyhow::Context;

use crate::args::{Args, Command, NodeArgs};

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Index(a) => index::run(a, args.quiet).await,
        Command::Inspect(a) => inspect::run(a, args.verbose > 0).await,
        Command::Ls(a) => ls::run(a).await,
        Command::Cat(a) => cat::run(a).await,
        Command::Extract(a) => extract::run(a, args.quiet).await,
        Command::Mount(a) => mount::run(a, args.quiet).await,
        Command::ServeMount(a) => mount::serve(a, args.quiet).await,
        Command::Daemon(a) => mount::daemon(a).await,
        Command::Archive(a) => archive::run(a, args.quiet).await,
        Command::Push(a) => push::run(a, args.quiet).await,
        Command::Pull(a) => pull::run(a, args.quiet).await,
        Command::Run(a) => return run::run(a).await,
        Command::Profile(c) => profile::run(c, args.quiet).await,
        Command::Gc(a) => gc::run(a, args.quiet).await,
        Command::Config(a) => config::run(a),
        Command::Snapshotter(a) => snapshotter::run(a).await,
    }?;
    Ok(ExitCode::SUCCESS)
}

/// `file`, or with `view` the index of that view of it (a layer's own tree, or all of them side by side),
/// built into a temporary file that lives as long as the returned guard.
async fn viewed(
    file: &clip_image::Location,
    view: Option<clip_image::ViewChoice>,
    parts: &crate::args::PartsArgs,
    opts: &clip_image::OpenOptions,
) -> anyhow::Result<(clip_image::Location, Option<clip_image::ViewIndex>)> {
    let Some(view) = view else { return Ok((file.clone(), None)) };
    let store = std::sync::Arc::new(parts.store());
    let index = clip_image::view_index(file, &view, store, opts)
        .await
        .with_context(|| format!("building the layer view of {file}"))?;
    Ok((index.location(), Some(index)))
}

/// The worker node for pull/run/gc: the configuration, and this binary to serve shared mounts.
fn node(a: &NodeArgs) -> anyhow::Result<clip_node::Node> {
    let config = clip_node::Config::load(a.config.as_deref()).context("loading the configuration")?;
    let exe = std::env::current_exe().context("finding the clip binary")?;
    Ok(clip_node::Node::new(config, exe))
}

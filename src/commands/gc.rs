//! `clip gc`: unmount shared image mounts that no running container uses.

use anyhow::Context;

use crate::args::NodeArgs;
use crate::commands::node;

pub async fn run(a: NodeArgs, quiet: bool) -> anyhow::Result<()> {
    let node = node(&a)?;
    let report = node.gc().context("collecting unused mounts")?;
    if !quiet {
        for e in &report {
            let what = if e.unmounted { "unmounted".to_owned() } else { format!("kept ({} users)", e.users) };
            eprintln!("{}: {what}", e.mountpoint.display());
        }
    }
    Ok(())
}

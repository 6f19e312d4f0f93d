//! `clip gc`: unmount shared image mounts that no running container uses, then remove the layer parts that no
//! index of the local index store uses.

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
    let parts = node.gc_parts().context("collecting unused layer parts")?;
    if !quiet {
        for (key, bytes) in &parts.removed {
            eprintln!("removed layer part {key} ({bytes} bytes): no kept index uses it");
        }
        let freed: u64 = parts.removed.iter().map(|(_, b)| b).sum();
        eprintln!("layer parts: {} removed ({freed} bytes), {} kept", parts.removed.len(), parts.kept);
    }
    Ok(())
}

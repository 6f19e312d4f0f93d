//! `clip config`: print the effective node configuration, one `key = value  # origin` line per setting.

use std::io::Write;

use anyhow::Context;

use crate::args::NodeArgs;

pub fn run(a: NodeArgs) -> anyhow::Result<()> {
    let config = clip_node::Config::load(a.config.as_deref()).context("loading the configuration")?;
    let mut out = crate::output::stdout();
    match &config.file {
        Some(f) => writeln!(out, "# file: {}", f.display())?,
        None => writeln!(out, "# file: none ({} does not exist)", clip_node::config::DEFAULT_CONFIG_FILE)?,
    }
    for (key, value, origin) in config.entries() {
        writeln!(out, "{key} = {value}  # {origin}")?;
    }
    out.flush()?;
    Ok(())
}

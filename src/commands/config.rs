//! `clip config`: print the effective node configuration, one `key = value  # origin` line per setting.

use anyhow::Context;

pub fn run(config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let config = clip_client::Config::load(config).context("loading the configuration")?;
    match &config.file {
        Some(f) => println!("# file: {}", f.display()),
        None => println!("# file: none ({} does not exist)", clip_client::config::DEFAULT_CONFIG_FILE),
    }
    for (key, value, origin) in config.entries() {
        println!("{key} = {value}  # {origin}");
    }
    Ok(())
}

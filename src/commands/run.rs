//! `clip run`: run a command in a new container of an image; clip exits with the command's exit code.

use std::process::ExitCode;

use anyhow::Context;

use crate::args::RunArgs;
use crate::commands::node;

pub async fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let mut node = node(&a.node)?;
    if let Some(path) = a.record_profile {
        node = node.with_record_profile(path);
    }
    let code = node.run(&a.image, &a.command).await.with_context(|| format!("running {}", a.image))?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)))
}

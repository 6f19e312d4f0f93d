//! One module per subcommand; each turns its arguments into library calls and prints the result.

mod archive;
mod cat;
mod extract;
mod index;
mod inspect;
mod ls;
mod mount;
mod progress;
mod push;

use std::process::ExitCode;

use crate::args::{Args, Command};

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Index(a) => index::run(a, args.quiet).await,
        Command::Inspect(a) => inspect::run(a).await,
        Command::Ls(a) => ls::run(a).await,
        Command::Cat(a) => cat::run(a).await,
        Command::Extract(a) => extract::run(a, args.quiet).await,
        Command::Mount(a) => mount::run(a, args.quiet).await,
        Command::Archive(a) => archive::run(a, args.quiet).await,
        Command::Push(a) => push::run(a, args.quiet).await,
    }?;
    Ok(ExitCode::SUCCESS)
}

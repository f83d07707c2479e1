//! `cod serve`: runs a node. Placeholder; the node engineer replaces this file.

use argh::FromArgs;

/// run a Cod node (orchestrator and/or compute)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "serve")]
pub struct ServeArgs {}

/// Runs the node until shutdown.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("serve is not wired yet")
}

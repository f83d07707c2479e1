//! `cod agent …` (questions about the node the CLI talks to) and `cod version`.

use anyhow::Context as _;
use argh::FromArgs;
use serde::Serialize;

use super::Context;
use super::node::render_node_info;
use super::output::{
    OutputFormat, Table, diag, emit, emit_line, key_values, render_structured, to_yaml,
};
use crate::model::BuildVersionInfo;

/// ask the node the CLI talks to about itself
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "agent")]
pub struct AgentArgs {
    /// the agent command
    #[argh(subcommand)]
    pub command: AgentCommand,
}

/// The `agent` commands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum AgentCommand {
    /// `agent alive`
    Alive(AliveArgs),
    /// `agent version`
    Version(AgentVersionArgs),
    /// `agent node`
    Node(AgentNodeArgs),
    /// `agent config`
    Config(AgentConfigArgs),
}

/// check that the node answers
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "alive")]
pub struct AliveArgs {
    /// output format: table, json or yaml
    #[argh(option)]
    pub output: Option<OutputFormat>,
}

/// show the node's build version
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "version")]
pub struct AgentVersionArgs {
    /// output format: table, json or yaml
    #[argh(option)]
    pub output: Option<OutputFormat>,
}

/// show the node's self-description
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "node")]
pub struct AgentNodeArgs {
    /// output format: table, json or yaml
    #[argh(option)]
    pub output: Option<OutputFormat>,
}

/// show the node's configuration (secrets redacted by the node)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "config")]
pub struct AgentConfigArgs {
    /// output format: yaml (default for table), json
    #[argh(option)]
    pub output: Option<OutputFormat>,
}

/// show the client's version and, if it answers, the node's
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "version")]
pub struct VersionArgs {
    /// show only the client's version (no request)
    #[argh(switch)]
    pub client: bool,
    /// output format: table, json or yaml
    #[argh(option)]
    pub output: Option<OutputFormat>,
}

/// Runs an `agent` command.
pub async fn run(ctx: &Context, args: AgentArgs) -> anyhow::Result<()> {
    let client = &ctx.client;
    let what = || format!("asking the node at {}", client.base());
    match args.command {
        AgentCommand::Alive(a) => {
            let alive = client.agent_alive().await.with_context(what)?;
            match render_structured(&alive, ctx.format(a.output))? {
                Some(text) => emit(&text),
                None => emit_line(&alive.status),
            }
        }
        AgentCommand::Version(a) => {
            let version = client.agent_version().await.with_context(what)?;
            match render_structured(&version, ctx.format(a.output))? {
                Some(text) => emit(&text),
                None => emit(&render_build(&version)),
            }
        }
        AgentCommand::Node(a) => {
            let info = client.agent_node().await.with_context(what)?;
            match render_structured(&info, ctx.format(a.output))? {
                Some(text) => emit(&text),
                None => emit(&render_node_info(&info)),
            }
        }
        AgentCommand::Config(a) => {
            let config = client.agent_config().await.with_context(what)?;
            // A configuration has no table form; YAML is what people edit it as.
            match render_structured(&config, ctx.format(a.output))? {
                Some(text) => emit(&text),
                None => emit(&to_yaml(&config)?),
            }
        }
    }
}

fn render_build(v: &BuildVersionInfo) -> String {
    let mut pairs = vec![("Version", v.git_version.clone())];
    if !v.git_commit.is_empty() {
        pairs.push(("Commit", v.git_commit.clone()));
    }
    if !v.build_date.is_empty() {
        pairs.push(("Build Date", v.build_date.clone()));
    }
    pairs.push(("OS/Arch", format!("{}/{}", v.goos, v.goarch)));
    key_values(&pairs)
}

/// `cod version --output json|yaml` (Bacalhau's key names).
#[derive(Debug, Serialize)]
struct Versions {
    #[serde(rename = "clientVersion")]
    client: BuildVersionInfo,
    #[serde(rename = "serverVersion", skip_serializing_if = "Option::is_none")]
    server: Option<BuildVersionInfo>,
}

/// Runs `cod version`. An unreachable node is not an error here: the client's version is still useful.
pub async fn version(ctx: &Context, args: VersionArgs) -> anyhow::Result<()> {
    let client_version = BuildVersionInfo::current();
    let server = if args.client {
        None
    } else {
        match ctx.client.agent_version().await {
            Ok(v) => Some(v),
            Err(e) => {
                diag(&format!("note: no server version: {e}"));
                None
            }
        }
    };
    let versions = Versions {
        client: client_version,
        server,
    };
    match render_structured(&versions, ctx.format(args.output))? {
        Some(text) => emit(&text),
        None => {
            let mut t = Table::new(&["client", "server", "client features"]);
            let server = versions.server.as_ref().map(|s| s.git_version.clone());
            t.row(vec![
                versions.client.git_version.clone(),
                server.unwrap_or_else(|| "-".to_owned()),
                crate::FEATURES.join(","),
            ]);
            emit(&t.render())
        }
    }
}

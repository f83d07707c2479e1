//! `cod node …`: list, describe and admit compute nodes through the orchestrator's API.

use std::time::SystemTime;

use anyhow::{Context as _, bail};
use argh::FromArgs;

use super::Context;
use super::client::{ListNodesQuery, NodeAction, label_selector_params};
use super::output::{
    OutputFormat, Table, bytes, emit, emit_line, key_values, render_structured, short_id,
};
use crate::model::{NodeInfo, NodeState, NodeType, Resources};

/// list, describe and admit nodes
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "node")]
pub struct NodeArgs {
    /// the node command
    #[argh(subcommand)]
    pub command: NodeCommand,
}

/// The `node` commands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum NodeCommand {
    /// `node list`
    List(NodeListArgs),
    /// `node describe`
    Describe(NodeDescribeArgs),
    /// `node approve`
    Approve(NodeApproveArgs),
    /// `node reject`
    Reject(NodeRejectArgs),
    /// `node delete`
    Delete(NodeDeleteArgs),
}

/// list the nodes the orchestrator knows
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub struct NodeListArgs {
    /// only nodes in this admission state: PENDING, APPROVED or REJECTED
    #[argh(option)]
    pub filter_approval: Option<String>,
    /// only nodes in this link state: CONNECTED or DISCONNECTED
    #[argh(option)]
    pub filter_status: Option<String>,
    /// label selector, e.g. "os_arch=arm64"
    #[argh(option)]
    pub labels: Option<String>,
    /// output format: table, json or yaml
    #[argh(option)]
    pub output: Option<OutputFormat>,
}

/// show one node
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "describe")]
pub struct NodeDescribeArgs {
    /// node id (a unique prefix is enough)
    #[argh(positional)]
    pub id: String,
    /// output format: table, json or yaml
    #[argh(option)]
    pub output: Option<OutputFormat>,
}

/// admit a pending node
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "approve")]
pub struct NodeApproveArgs {
    /// node id (a unique prefix is enough)
    #[argh(positional)]
    pub id: String,
    /// why (kept with the node)
    #[argh(option, short = 'm', default = "String::new()")]
    pub message: String,
}

/// refuse a node and disconnect it
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "reject")]
pub struct NodeRejectArgs {
    /// node id (a unique prefix is enough)
    #[argh(positional)]
    pub id: String,
    /// why (kept with the node)
    #[argh(option, short = 'm', default = "String::new()")]
    pub message: String,
}

/// forget a node
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "delete")]
pub struct NodeDeleteArgs {
    /// node id (a unique prefix is enough)
    #[argh(positional)]
    pub id: String,
    /// why
    #[argh(option, short = 'm', default = "String::new()")]
    pub message: String,
}

/// Runs a `node` command.
pub async fn run(ctx: &Context, args: NodeArgs) -> anyhow::Result<()> {
    match args.command {
        NodeCommand::List(a) => list(ctx, a).await,
        NodeCommand::Describe(a) => describe(ctx, a).await,
        NodeCommand::Approve(a) => act(ctx, &a.id, NodeAction::Approve, &a.message).await,
        NodeCommand::Reject(a) => act(ctx, &a.id, NodeAction::Reject, &a.message).await,
        NodeCommand::Delete(a) => act(ctx, &a.id, NodeAction::Delete, &a.message).await,
    }
}

async fn list(ctx: &Context, args: NodeListArgs) -> anyhow::Result<()> {
    let query = ListNodesQuery {
        filter_approval: args.filter_approval.map(|s| s.to_ascii_uppercase()),
        filter_status: args.filter_status.map(|s| s.to_ascii_uppercase()),
        labels: match &args.labels {
            Some(l) => label_selector_params(l)?,
            None => Vec::new(),
        },
    };
    let response = ctx
        .client
        .list_nodes(&query)
        .await
        .context("listing nodes")?;
    match render_structured(&response.nodes, ctx.format(args.output))? {
        Some(text) => emit(&text),
        None => emit(&render_node_list(&response.nodes)),
    }
}

async fn describe(ctx: &Context, args: NodeDescribeArgs) -> anyhow::Result<()> {
    let node = ctx
        .client
        .get_node(&args.id)
        .await
        .with_context(|| format!("fetching node {}", args.id))?;
    match render_structured(&node, ctx.format(args.output))? {
        Some(text) => emit(&text),
        None => emit(&render_node(&node)),
    }
}

async fn act(ctx: &Context, id: &str, action: NodeAction, message: &str) -> anyhow::Result<()> {
    let verb = match action {
        NodeAction::Approve => "approving",
        NodeAction::Reject => "rejecting",
        NodeAction::Delete => "deleting",
    };
    let response = ctx
        .client
        .update_node(id, action, message)
        .await
        .with_context(|| format!("{verb} node {id}"))?;
    if !response.success {
        let why = if response.error.is_empty() {
            "the orchestrator refused"
        } else {
            response.error.as_str()
        };
        bail!("{verb} node {id}: {why}");
    }
    let done = match action {
        NodeAction::Approve => "approved",
        NodeAction::Reject => "rejected",
        NodeAction::Delete => "deleted",
    };
    emit_line(&format!("Node {id} {done}."))
}

fn node_type(t: NodeType) -> &'static str {
    match t {
        NodeType::Requester => "Requester",
        NodeType::Compute => "Compute",
    }
}

fn labels(info: &NodeInfo) -> String {
    info.labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `available / max` for one resource dimension.
fn capacity(info: &NodeInfo, dim: impl Fn(&Resources) -> String) -> String {
    if info.node_type != NodeType::Compute {
        return String::new();
    }
    let c = &info.compute_node_info;
    format!(
        "{} / {}",
        dim(&c.available_capacity.resources),
        dim(&c.max_capacity.resources)
    )
}

/// How long ago an RFC 3339 time was, in the largest whole unit ("3s ago", "5m ago", "2h ago", "4d ago");
/// `-` when there is none or it does not parse. A time in the future (clock skew) reads "just now".
fn age(rfc3339: &str, now: SystemTime) -> String {
    let Ok(then) = humantime::parse_rfc3339_weak(rfc3339.trim()) else {
        return "-".to_owned();
    };
    let secs = now.duration_since(then).map_or(0, |d| d.as_secs());
    match secs {
        0 => "just now".to_owned(),
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86_400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

/// The `node list` table: Bacalhau's columns (capacities as available / total), plus the age of the last
/// heartbeat (`-o json`/`yaml` carry it as RFC 3339 in `ConnectionState.LastHeartbeat`).
pub fn render_node_list(nodes: &[NodeState]) -> String {
    render_node_list_at(nodes, SystemTime::now())
}

fn render_node_list_at(nodes: &[NodeState], now: SystemTime) -> String {
    let mut t = Table::new(&[
        "id",
        "type",
        "approval",
        "status",
        "last heartbeat",
        "labels",
        "cpu",
        "memory",
        "disk",
        "gpu",
    ]);
    for n in nodes {
        let info = &n.info;
        t.row(vec![
            short_id(info.node_id.as_str()),
            node_type(info.node_type).to_owned(),
            n.membership.as_str().to_owned(),
            n.connection.as_str().to_owned(),
            age(&n.connection_state.last_heartbeat, now),
            labels(info),
            capacity(info, |r| format!("{:.1}", r.cpu)),
            capacity(info, |r| bytes(r.memory)),
            capacity(info, |r| bytes(r.disk)),
            capacity(info, |r| r.gpu.to_string()),
        ]);
    }
    t.render()
}

/// `node describe` as key/value lines.
pub fn render_node(node: &NodeState) -> String {
    render_node_at(node, SystemTime::now())
}

fn render_node_at(node: &NodeState, now: SystemTime) -> String {
    let c = &node.connection_state;
    let mut pairs = node_info_pairs(&node.info);
    pairs.push(("Approval", node.membership.as_str().to_owned()));
    // Cod's extension: how the node was admitted (the list keeps Bacalhau's columns).
    pairs.push(("Admission", node.admission.as_str().to_owned()));
    pairs.push(("Status", node.connection.as_str().to_owned()));
    for (key, value) in [
        ("Last Heartbeat", &c.last_heartbeat),
        ("Connected Since", &c.connected_since),
        ("Disconnected Since", &c.disconnected_since),
        ("Last Error", &c.last_error),
    ] {
        if value.is_empty() {
            continue;
        }
        if key == "Last Heartbeat" {
            pairs.push((key, format!("{value} ({})", age(value, now))));
        } else {
            pairs.push((key, value.clone()));
        }
    }
    key_values(&pairs)
}

/// A node's self-description as key/value lines (also `cod agent node`).
pub fn render_node_info(info: &NodeInfo) -> String {
    key_values(&node_info_pairs(info))
}

fn node_info_pairs(info: &NodeInfo) -> Vec<(&'static str, String)> {
    let c = &info.compute_node_info;
    let res = |r: &Resources| {
        format!(
            "CPU {:.1}, memory {}, disk {}, GPU {}",
            r.cpu,
            bytes(r.memory),
            bytes(r.disk),
            r.gpu
        )
    };
    let mut pairs = vec![
        ("ID", info.node_id.to_string()),
        ("Type", node_type(info.node_type).to_owned()),
        ("Version", info.bacalhau_version.git_version.clone()),
        ("Labels", labels(info)),
        ("Protocols", info.supported_protocols.join(", ")),
    ];
    if !info.listen_addresses.is_empty() {
        pairs.push(("Listen", info.listen_addresses.join(", ")));
    }
    if info.node_type == NodeType::Compute {
        pairs.extend([
            ("Engines", c.execution_engines.join(", ")),
            ("Publishers", c.publishers.join(", ")),
            ("Storage Sources", c.storage_sources.join(", ")),
            ("Max Capacity", res(&c.max_capacity.resources)),
            ("Available", res(&c.available_capacity.resources)),
            ("Max Job", res(&c.max_job_requirements)),
            ("Running", c.running_executions.to_string()),
            ("Enqueued", c.enqueued_executions.to_string()),
        ]);
        if !c.max_capacity.gpus.is_empty() {
            pairs.push(("GPUs", gpus(c)));
        }
    }
    pairs
}

/// `0: Tesla T4 (15360 MiB, 0000:3B:00.0, free); 1: …`: each GPU, and whether it is free now.
fn gpus(c: &crate::model::ComputeNodeInfo) -> String {
    c.max_capacity
        .gpus
        .iter()
        .map(|g| {
            let free = c.available_capacity.gpus.iter().any(|f| f.index == g.index);
            let mut details = vec![format!("{} MiB", g.memory)];
            if !g.pci_address.is_empty() {
                details.push(g.pci_address.clone());
            }
            details.push(if free { "free" } else { "in use" }.to_owned());
            format!("{}: {} ({})", g.index, g.name, details.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ComputeNodeInfo, NodeConnection, NodeMembership};

    fn node() -> NodeState {
        let mut info = NodeInfo {
            node_id: "12D3KooWAbCdEfGhIjKlMn".to_owned().into(),
            node_type: NodeType::Compute,
            compute_node_info: ComputeNodeInfo {
                execution_engines: vec!["wasm".into()],
                max_capacity: Resources {
                    cpu: 4.0,
                    memory: 4 << 30,
                    disk: 0,
                    gpu: 0,
                }
                .into(),
                available_capacity: Resources {
                    cpu: 3.5,
                    memory: 2 << 30,
                    disk: 0,
                    gpu: 0,
                }
                .into(),
                ..ComputeNodeInfo::default()
            },
            ..NodeInfo::default()
        };
        info.labels.insert("os_arch".into(), "arm64".into());
        NodeState {
            info,
            membership: NodeMembership::Pending,
            connection: NodeConnection::Connected,
            ..NodeState::default()
        }
    }

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).expect("time")
    }

    #[test]
    fn node_list_table() {
        let mut n = node();
        n.connection_state.last_heartbeat = "2026-01-02T03:04:05.5Z".into();
        let text = render_node_list_at(&[n], at("2026-01-02T03:04:08.9Z"));
        let expected = "\
ID            TYPE     APPROVAL  STATUS     LAST HEARTBEAT  LABELS         CPU        MEMORY             DISK       GPU
12D3KooWAbCd  Compute  PENDING   CONNECTED  3s ago          os_arch=arm64  3.5 / 4.0  2.0 GiB / 4.0 GiB  0 B / 0 B  0 / 0
";
        assert_eq!(text, expected);
    }

    #[test]
    fn heartbeat_ages_use_the_largest_whole_unit() {
        let now = at("2026-01-10T00:00:00Z");
        assert_eq!(age("", now), "-");
        assert_eq!(age("yesterday", now), "-");
        assert_eq!(age("2026-01-10T00:00:00Z", now), "just now");
        assert_eq!(age("2026-01-10T00:00:30Z", now), "just now", "future: skew");
        assert_eq!(age("2026-01-09T23:58:59Z", now), "1m ago");
        assert_eq!(age("2026-01-09T21:00:00Z", now), "3h ago");
        assert_eq!(age("2026-01-07T00:00:00Z", now), "3d ago");
    }

    #[test]
    fn node_describe_lists_capabilities_and_heartbeat_age() {
        let mut n = node();
        n.connection_state.last_heartbeat = "2026-01-02T03:04:05Z".into();
        let text = render_node_at(&n, at("2026-01-02T03:06:05Z"));
        assert!(text.contains("Engines         = wasm\n"), "{text}");
        assert!(text.contains("Approval        = PENDING\n"), "{text}");
        assert!(text.contains("Status          = CONNECTED\n"), "{text}");
        assert!(
            text.contains("Last Heartbeat  = 2026-01-02T03:04:05Z (2m ago)\n"),
            "{text}"
        );
    }
}

//! `/api/v1/orchestrator/nodes…`: list, get, approve/reject/delete.
//!
//! Responses carry Bacalhau's keys (`Nodes`, `Node`, `Success`) and lower-case twins (`nodes`, `node`,
//! `success`, `error`), because the Python 1.4.1 client looks keys up case-sensitively in lower case. For the
//! same client, `filter_approval`/`filter_status` are read like `filter-approval`/`filter-status`, and
//! `POST /nodes` with the node id in the body works like `PUT /nodes/{id}`.

use std::cmp::Ordering;

use axum::Json;
use serde::{Deserialize, Serialize};

use crate::model::constraint;
use crate::model::{NodeConnection, NodeMembership, NodeState, NodeType};
use crate::orchestrator::{NodeAction, Orchestrator};

use super::error::HttpError;
use super::extract::{Body, Orch, Params, PathId, page};

#[derive(Debug, Serialize)]
pub(super) struct ListNodesResponse {
    #[serde(rename = "Nodes")]
    nodes: Vec<NodeState>,
    #[serde(rename = "NextToken")]
    next_token: String,
    /// Twin of `Nodes` for the Python client.
    #[serde(rename = "nodes")]
    nodes_lower: Vec<NodeState>,
}

#[derive(Debug, Serialize)]
pub(super) struct GetNodeResponse {
    #[serde(rename = "Node")]
    node: NodeState,
    /// Twin of `Node` for the Python client.
    #[serde(rename = "node")]
    node_lower: NodeState,
}

/// Body of `PUT /nodes/{id}` and `POST /nodes`; the Python client spells the keys `action`, `message`,
/// `nodeID`, which case-insensitive decoding maps here.
#[derive(Debug, Deserialize)]
struct PutNodeRequest {
    #[serde(rename = "Action", default)]
    action: String,
    #[serde(rename = "Message", default)]
    message: String,
    #[serde(rename = "NodeID", default)]
    node_id: String,
}

#[derive(Debug, Serialize)]
pub(super) struct PutNodeResponse {
    #[serde(rename = "Success")]
    success: bool,
    #[serde(rename = "Error")]
    error: String,
    /// Twins for the Python client.
    #[serde(rename = "success")]
    success_lower: bool,
    #[serde(rename = "error")]
    error_lower: String,
}

/// What `order_by` may name.
#[derive(Debug, Clone, Copy)]
enum NodeOrder {
    Id,
    Type,
    AvailableCpu,
    AvailableMemory,
    AvailableDisk,
    AvailableGpu,
    Approval,
    Status,
}

impl NodeOrder {
    const NAMES: &'static str = "id, type, available_cpu, available_memory, available_disk, available_gpu, approval, status";

    fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "id" => Self::Id,
            "type" => Self::Type,
            "available_cpu" => Self::AvailableCpu,
            "available_memory" => Self::AvailableMemory,
            "available_disk" => Self::AvailableDisk,
            "available_gpu" => Self::AvailableGpu,
            "approval" => Self::Approval,
            "status" => Self::Status,
            _ => return None,
        })
    }

    fn compare(self, a: &NodeState, b: &NodeState) -> Ordering {
        let free = |n: &NodeState| n.info.compute_node_info.available_capacity.resources;
        let by = match self {
            Self::Id => Ordering::Equal,
            // Alphabetical by wire name: Compute before Requester.
            Self::Type => {
                let requester = |n: &NodeState| n.info.node_type == NodeType::Requester;
                requester(a).cmp(&requester(b))
            }
            Self::AvailableCpu => free(a).cpu.total_cmp(&free(b).cpu),
            Self::AvailableMemory => free(a).memory.cmp(&free(b).memory),
            Self::AvailableDisk => free(a).disk.cmp(&free(b).disk),
            Self::AvailableGpu => free(a).gpu.cmp(&free(b).gpu),
            Self::Approval => a.membership.as_str().cmp(b.membership.as_str()),
            Self::Status => a.connection.as_str().cmp(b.connection.as_str()),
        };
        // Ties fall back to the id so pages are stable.
        by.then_with(|| a.info.node_id.cmp(&b.info.node_id))
    }
}

/// `GET /nodes`: known nodes, filtered by approval, connection and label selectors.
pub(super) async fn list(
    Orch(o): Orch,
    params: Params,
) -> Result<Json<ListNodesResponse>, HttpError> {
    let approval = match params
        .get(&["filter-approval", "filter_approval"])
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        None => None,
        Some(v) => Some(
            [
                NodeMembership::Pending,
                NodeMembership::Approved,
                NodeMembership::Rejected,
            ]
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(v))
            .ok_or_else(|| {
                HttpError::bad_request(format!(
                    "filter-approval={v:?} is not one of PENDING, APPROVED, REJECTED"
                ))
            })?,
        ),
    };
    let status = match params
        .get(&["filter-status", "filter_status"])
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        None => None,
        Some(v) => Some(
            [NodeConnection::Connected, NodeConnection::Disconnected]
                .into_iter()
                .find(|c| c.as_str().eq_ignore_ascii_case(v))
                .ok_or_else(|| {
                    HttpError::bad_request(format!(
                        "filter-status={v:?} is not one of CONNECTED, DISCONNECTED"
                    ))
                })?,
        ),
    };
    let mut selectors = Vec::new();
    for text in params.all("labels") {
        selectors.extend(
            constraint::parse_selector(text)
                .map_err(|e| HttpError::bad_request(format!("labels={text:?}: {e}")))?,
        );
    }
    let order = match params.text("order_by") {
        None => NodeOrder::Id,
        Some(v) => NodeOrder::parse(v).ok_or_else(|| {
            HttpError::bad_request(format!("order_by={v:?} is not one of {}", NodeOrder::NAMES))
        })?,
    };
    let mut nodes: Vec<NodeState> = o
        .nodes()
        .into_iter()
        .filter(|n| approval.is_none_or(|a| n.membership == a))
        .filter(|n| status.is_none_or(|s| n.connection == s))
        .filter(|n| {
            selectors
                .iter()
                .all(|s| constraint::matches(s, &n.info.labels))
        })
        .collect();
    nodes.sort_by(|a, b| order.compare(a, b));
    if params.flag("reverse")? {
        nodes.reverse();
    }
    let (nodes, next_token) = page(nodes, params.limit()?, params.text("next_token"))?;
    Ok(Json(ListNodesResponse {
        nodes_lower: nodes.clone(),
        nodes,
        next_token,
    }))
}

/// `GET /nodes/{id}`: one node, by id or unique id prefix.
pub(super) async fn get(
    Orch(o): Orch,
    PathId(id): PathId,
) -> Result<Json<GetNodeResponse>, HttpError> {
    let node = o.node(&id)?;
    Ok(Json(GetNodeResponse {
        node_lower: node.clone(),
        node,
    }))
}

/// `PUT /nodes/{id}`: approve, reject or delete a node.
pub(super) async fn update(
    Orch(o): Orch,
    PathId(id): PathId,
    body: Body,
) -> Result<Json<PutNodeResponse>, HttpError> {
    let request = body.decode::<PutNodeRequest>("node update")?;
    let action = request.as_ref().map(|r| r.action.as_str()).unwrap_or("");
    let message = request.as_ref().map(|r| r.message.as_str()).unwrap_or("");
    apply(&o, &id, action, message).await
}

/// `POST /nodes`: the Python client's form of [`update`], with the node id in the body.
pub(super) async fn update_from_body(
    Orch(o): Orch,
    body: Body,
) -> Result<Json<PutNodeResponse>, HttpError> {
    let request = body
        .decode::<PutNodeRequest>("node update")?
        .ok_or_else(|| {
            HttpError::bad_request(
                "request body is empty; send {\"NodeID\": …, \"Action\": \"approve\"}",
            )
        })?;
    if request.node_id.trim().is_empty() {
        return Err(HttpError::bad_request(
            "NodeID is required (or use PUT /api/v1/orchestrator/nodes/{id})",
        ));
    }
    apply(
        &o,
        request.node_id.trim(),
        &request.action,
        &request.message,
    )
    .await
}

async fn apply(
    o: &Orchestrator,
    id: &str,
    action: &str,
    message: &str,
) -> Result<Json<PutNodeResponse>, HttpError> {
    let parsed = NodeAction::parse(action).ok_or_else(|| {
        let what = if action.trim().is_empty() {
            "Action is required".to_owned()
        } else {
            format!("action {action:?} is not supported")
        };
        HttpError::bad_request(format!("{what}; use one of approve, reject, delete"))
    })?;
    o.update_node(id, parsed).await?;
    tracing::debug!(node_id = id, action = ?parsed, message, "node update applied");
    Ok(Json(PutNodeResponse {
        success: true,
        error: String::new(),
        success_lower: true,
        error_lower: String::new(),
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::api::testing::TestServer;

    const NODES: &str = "/api/v1/orchestrator/nodes";

    #[tokio::test]
    async fn empty_list_has_both_spellings() {
        let s = TestServer::start().await;
        let (status, body) = s.get(NODES).await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({"Nodes": [], "NextToken": "", "nodes": []}));
        let (status, body) = s
            .get(&format!(
                "{NODES}?filter_approval=approved&filter-status=CONNECTED&labels=zone%3Dnorth&order_by=available_cpu&reverse=true&limit=10"
            ))
            .await;
        assert_eq!(status, 200, "{body}");
    }

    #[tokio::test]
    async fn bad_filters_are_named() {
        let s = TestServer::start().await;
        for (query, named) in [
            ("filter-approval=maybe", "filter-approval"),
            ("filter_status=asleep", "filter-status"),
            ("order_by=colour", "order_by"),
            ("labels=zone%20in%20()", "labels"),
        ] {
            let (status, body) = s.get(&format!("{NODES}?{query}")).await;
            assert_eq!(status, 400, "{query}");
            assert!(
                body["Message"].as_str().is_some_and(|m| m.contains(named)),
                "{body}"
            );
        }
    }

    #[tokio::test]
    async fn unknown_node_is_404() {
        let s = TestServer::start().await;
        let (status, body) = s.get(&format!("{NODES}/n-nope")).await;
        assert_eq!(status, 404);
        assert_eq!(body["Code"], "NotFound");
        let response = s
            .http
            .put(s.url(&format!("{NODES}/n-nope")))
            .json(&json!({"Action": "approve", "Message": "ok"}))
            .send()
            .await
            .expect("put");
        assert_eq!(response.status(), 404);
        // The Python client's form: POST with the id in the body.
        let response = s
            .http
            .post(s.url(NODES))
            .json(&json!({"action": "approve", "nodeID": "n-nope", "message": "ok"}))
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 404);
    }

    #[tokio::test]
    async fn unknown_action_lists_the_known_ones() {
        let s = TestServer::start().await;
        let response = s
            .http
            .put(s.url(&format!("{NODES}/n-1")))
            .json(&json!({"action": "promote"}))
            .send()
            .await
            .expect("put");
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.expect("json");
        let message = body["Message"].as_str().expect("message");
        assert!(message.contains("approve, reject, delete"), "{message}");

        let response = s
            .http
            .post(s.url(NODES))
            .json(&json!({"action": "approve"}))
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.expect("json");
        assert!(
            body["Message"]
                .as_str()
                .is_some_and(|m| m.contains("NodeID")),
            "{body}"
        );
    }
}

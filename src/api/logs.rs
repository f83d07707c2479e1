//! `GET /jobs/{id}/logs`: a job's output as Bacalhau's log stream, over a WebSocket.
//!
//! Two sources: a running execution's output is read live from the compute node running it (through the
//! orchestrator, over the node's own connection), and a finished execution's comes from its `RunOutput`, the
//! first bytes of stdout and stderr that the orchestrator keeps (the full output is in the published result);
//! what was already streamed live is not sent twice. Each line becomes one JSON text frame
//! `{"value":{"Type":1,"Line":"…\n"},"error":""}` (`Type` 1 = stdout, 2 = stderr); a cut stream ends with a
//! line saying so. With `follow=true` the stream stays open until the job is terminal: job changes wake it
//! through the orchestrator's change signal, and while an execution runs its node is asked for more output
//! every [`LIVE_POLL`]. The stream ends with close code 1000; a failure (unknown job) is one
//! `{"value":null,"error":"…"}` frame first.
//!
//! Clients that do not upgrade (the Python client does a plain GET) get the same frames as one JSON array.
//! `tail` is accepted and has no effect: only the head of the output is kept.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::model::{Execution, ExecutionId, ExecutionStateType, JobId};
use crate::orchestrator::{Orchestrator, OrchestratorError};

use super::AppState;
use super::error::HttpError;
use super::extract::{Orch, Params, PathId};

/// `Type` of stdout lines.
const STDOUT: u8 = 1;
/// `Type` of stderr lines.
const STDERR: u8 = 2;
/// How often a follower asks a running execution's node for more output.
const LIVE_POLL: Duration = Duration::from_millis(250);

/// One frame of the stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct LogFrame {
    value: Option<LogLine>,
    error: String,
}

/// One line of output.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct LogLine {
    #[serde(rename = "Type")]
    kind: u8,
    #[serde(rename = "Line")]
    line: String,
}

impl LogFrame {
    fn line(kind: u8, line: String) -> Self {
        Self {
            value: Some(LogLine { kind, line }),
            error: String::new(),
        }
    }

    fn error(message: String) -> Self {
        Self {
            value: None,
            error: message,
        }
    }
}

/// The handler: a WebSocket stream when the client upgrades, a JSON array otherwise.
pub(super) async fn logs(
    State(shared): State<AppState>,
    Orch(o): Orch,
    PathId(id): PathId,
    params: Params,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, HttpError> {
    params.flag("tail")?;
    let follower = Follower::new(
        o,
        id,
        params.namespace().to_owned(),
        params.text("execution_id").map(str::to_owned),
        params.flag("follow")?,
    );
    let shutdown = shared.shutdown.clone();
    match upgrade {
        Ok(ws) => Ok(ws.on_upgrade(move |socket| stream(socket, follower, shutdown))),
        Err(_) => collect(follower, shutdown).await,
    }
}

/// Sends the frames over the socket until the job's output is sent, the client leaves or the server shuts
/// down.
async fn stream(socket: WebSocket, mut follower: Follower, shutdown: CancellationToken) {
    let (mut tx, mut rx) = socket.split();
    let code = loop {
        tokio::select! {
            batch = follower.next_batch() => match batch {
                Ok(Some(frames)) => {
                    for frame in &frames {
                        if send(&mut tx, frame).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => break close_code::NORMAL,
                Err(e) => {
                    let _ = send(&mut tx, &LogFrame::error(HttpError::from(e).message().to_owned())).await;
                    break close_code::NORMAL;
                }
            },
            incoming = rx.next() => match incoming {
                // The client has nothing to say; anything but a close is ignored.
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            () = shutdown.cancelled() => break close_code::AWAY,
        }
    };
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: "".into(),
    }));
    let _ = tx.send(close).await;
}

async fn send(
    tx: &mut futures::stream::SplitSink<WebSocket, Message>,
    frame: &LogFrame,
) -> Result<(), axum::Error> {
    match serde_json::to_string(frame) {
        Ok(text) => tx.send(Message::Text(text.into())).await,
        // A frame of strings and integers always serializes; nothing to send otherwise.
        Err(_) => Ok(()),
    }
}

/// The plain-GET answer: every frame in one array. An unknown job is a 404, since there is a status to use.
async fn collect(
    mut follower: Follower,
    shutdown: CancellationToken,
) -> Result<Response, HttpError> {
    let mut frames = Vec::new();
    loop {
        tokio::select! {
            batch = follower.next_batch() => match batch {
                Ok(Some(more)) => frames.extend(more),
                Ok(None) => break,
                Err(e) if frames.is_empty() => return Err(e.into()),
                Err(e) => {
                    frames.push(LogFrame::error(HttpError::from(e).message().to_owned()));
                    break;
                }
            },
            () = shutdown.cancelled() => break,
        }
    }
    Ok(Json(frames).into_response())
}

/// Walks a job's finished executions, sending each one's output once; with `follow`, waits for more until
/// the job is terminal.
#[derive(Debug)]
struct Follower {
    orchestrator: Orchestrator,
    /// Id or name as the client gave it; replaced by the id once resolved, so a renamed lookup is stable.
    job: String,
    namespace: String,
    /// Only executions whose id starts with this.
    execution_prefix: Option<String>,
    follow: bool,
    /// Subscribed before the first read, so no change between a read and the wait is missed.
    changes: watch::Receiver<u64>,
    sent: HashSet<ExecutionId>,
    /// What was streamed of running executions.
    live: HashMap<ExecutionId, Live>,
    done: bool,
}

/// A running execution's output as streamed so far, per stream (index 0 stdout, 1 stderr).
#[derive(Debug, Clone, Default)]
struct Live {
    /// Bytes read from the node.
    read: [u64; 2],
    /// Bytes sent as frames (complete lines).
    sent: [usize; 2],
    /// The start of a line not yet complete.
    partial: [Vec<u8>; 2],
}

impl Live {
    /// Adds bytes read from the node; returns the frames of the lines they complete.
    fn push(&mut self, stream: usize, bytes: &[u8]) -> Vec<LogFrame> {
        self.read[stream] += bytes.len() as u64;
        let pending = &mut self.partial[stream];
        pending.extend_from_slice(bytes);
        let mut frames = Vec::new();
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            self.sent[stream] += line.len();
            frames.push(LogFrame::line(
                kind_of(stream),
                String::from_utf8_lossy(&line).into_owned(),
            ));
        }
        frames
    }
}

fn kind_of(stream: usize) -> u8 {
    if stream == 0 { STDOUT } else { STDERR }
}

impl Follower {
    fn new(
        orchestrator: Orchestrator,
        job: String,
        namespace: String,
        execution_prefix: Option<String>,
        follow: bool,
    ) -> Self {
        let changes = orchestrator.subscribe();
        Self {
            orchestrator,
            job,
            namespace,
            execution_prefix,
            follow,
            changes,
            sent: HashSet::new(),
            live: HashMap::new(),
            done: false,
        }
    }

    /// The frames of output since the last call (live lines of running executions, the rest of finished
    /// ones), or `None` when the stream is over.
    ///
    /// Cancel-safe: state changes only after the last `.await`, so a cancelled call loses nothing.
    async fn next_batch(&mut self) -> Result<Option<Vec<LogFrame>>, OrchestratorError> {
        loop {
            if self.done {
                return Ok(None);
            }
            // Marks the current version seen before reading, so a change after the read wakes the wait.
            self.changes.borrow_and_update();
            let job = self.orchestrator.job(&self.job, &self.namespace).await?;
            let executions = self
                .orchestrator
                .executions(job.id.as_str(), &self.namespace)
                .await?;
            // Live reads first (the awaits); nothing of `self` changes until they are all done.
            let mut live_reads = Vec::new();
            for e in &executions {
                if self.wanted(e)
                    && e.compute_state.state_type == ExecutionStateType::Running
                    && !self.sent.contains(&e.id)
                {
                    let seen = self.live.get(&e.id).cloned().unwrap_or_default();
                    let read = self
                        .orchestrator
                        .read_output(&e.node_id, &e.id, seen.read[0], seen.read[1])
                        .await;
                    live_reads.push((e.id.clone(), seen, read));
                }
            }
            self.job = job.id.to_string();
            let running = !live_reads.is_empty();
            let mut frames = Vec::new();
            for (id, mut seen, read) in live_reads {
                if let Some((stdout, stderr, _)) = read {
                    frames.extend(seen.push(0, &stdout));
                    frames.extend(seen.push(1, &stderr));
                }
                self.live.insert(id, seen);
            }
            for e in executions {
                if self.wanted(&e) && e.is_terminal() && !self.sent.contains(&e.id) {
                    let seen = self.live.remove(&e.id).unwrap_or_default();
                    frames.extend(frames_of(&e, &job.id, &seen));
                    self.sent.insert(e.id);
                }
            }
            if !self.follow || job.state.state_type.is_terminal() {
                self.done = true;
            }
            if !frames.is_empty() {
                return Ok(Some(frames));
            }
            if self.done {
                continue;
            }
            if running {
                // Output appears without a state change: ask again soon, or earlier on a change.
                let _ = tokio::time::timeout(LIVE_POLL, self.changes.changed()).await;
            } else if self.changes.changed().await.is_err() {
                // The orchestrator is gone; nothing more will happen.
                self.done = true;
            }
        }
    }

    fn wanted(&self, e: &Execution) -> bool {
        self.execution_prefix
            .as_deref()
            .is_none_or(|p| e.id.as_str().starts_with(p))
    }
}

/// One finished execution's output as frames, stdout lines then stderr lines, less what `live` already sent.
fn frames_of(e: &Execution, job: &JobId, live: &Live) -> Vec<LogFrame> {
    let Some(out) = &e.run_output else {
        return Vec::new();
    };
    let mut frames = Vec::new();
    for (stream, (kind, name, text, truncated)) in [
        (STDOUT, "stdout", &out.stdout, out.stdout_truncated),
        (STDERR, "stderr", &out.stderr, out.stderr_truncated),
    ]
    .into_iter()
    .enumerate()
    {
        let sent = live.sent[stream];
        if sent >= text.len() && sent > 0 {
            // The live stream got past the kept head: only its unfinished last line is left to send.
            let rest = String::from_utf8_lossy(&live.partial[stream]).into_owned();
            if !rest.is_empty() {
                frames.push(LogFrame::line(kind, format!("{rest}\n")));
            }
            continue;
        }
        let from = (sent..=text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        for line in text[from..].split_inclusive('\n') {
            let mut line = line.to_owned();
            if !line.ends_with('\n') {
                line.push('\n');
            }
            frames.push(LogFrame::line(kind, line));
        }
        if truncated {
            frames.push(LogFrame::line(
                kind,
                format!(
                    "[cod: {name} of execution {} was truncated here; `cod job get {job}` downloads the full output]\n",
                    e.id
                ),
            ));
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ExecutionStateType, RunCommandResult, State};

    fn finished(stdout: &str, stderr: &str, stdout_truncated: bool) -> Execution {
        Execution {
            id: ExecutionId::from("e-1".to_owned()),
            compute_state: State::new(ExecutionStateType::Completed, ""),
            run_output: Some(RunCommandResult {
                stdout: stdout.to_owned(),
                stdout_truncated,
                stderr: stderr.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn each_line_is_one_frame_stdout_first() {
        let frames = frames_of(
            &finished("a\nb", "oops\n", false),
            &JobId::from("j-1".to_owned()),
            &Live::default(),
        );
        let lines: Vec<(u8, &str)> = frames
            .iter()
            .filter_map(|f| f.value.as_ref())
            .map(|v| (v.kind, v.line.as_str()))
            .collect();
        assert_eq!(lines, vec![(1, "a\n"), (1, "b\n"), (2, "oops\n")]);
        let wire = serde_json::to_value(&frames[0]).expect("serializes");
        assert_eq!(
            wire,
            serde_json::json!({"value": {"Type": 1, "Line": "a\n"}, "error": ""})
        );
    }

    #[test]
    fn truncated_output_says_where_the_rest_is() {
        let frames = frames_of(
            &finished("head\n", "", true),
            &JobId::from("j-9".to_owned()),
            &Live::default(),
        );
        let last = frames
            .last()
            .and_then(|f| f.value.as_ref())
            .expect("a line");
        assert_eq!(last.kind, STDOUT);
        assert!(last.line.contains("truncated"), "{}", last.line);
        assert!(last.line.contains("cod job get j-9"), "{}", last.line);
    }

    #[test]
    fn live_lines_are_sent_once() {
        let mut live = Live::default();
        let lines = |f: Vec<LogFrame>| -> Vec<String> {
            f.into_iter()
                .filter_map(|f| f.value.map(|v| v.line))
                .collect()
        };
        assert_eq!(lines(live.push(0, b"one\ntw")), ["one\n"]);
        assert_eq!(lines(live.push(0, b"o\nthr")), ["two\n"]);
        assert_eq!(live.read[0], 11);
        // Finished: the kept head repeats what was streamed; only the rest goes out.
        let done = finished("one\ntwo\nthree\n", "", false);
        assert_eq!(
            lines(frames_of(&done, &JobId::default(), &live)),
            ["three\n"]
        );
        // Streamed past the head (a long output): the unfinished line is all that is left.
        let short_head = finished("one\n", "", true);
        assert_eq!(
            lines(frames_of(&short_head, &JobId::default(), &live)),
            ["thr\n"]
        );
    }

    #[test]
    fn executions_without_output_send_nothing() {
        let mut e = finished("x", "", false);
        e.run_output = None;
        assert!(frames_of(&e, &JobId::default(), &Live::default()).is_empty());
    }
}

#[cfg(test)]
mod socket_tests {
    use futures::StreamExt;
    use serde_json::{Value, json};
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    use crate::api::testing::{TestServer, wasm_job};

    /// Reads the stream to its end: the text frames and the close code.
    async fn read_all(s: &TestServer, path: &str) -> (Vec<Value>, Option<CloseCode>) {
        let url = s.url(path).replacen("http://", "ws://", 1);
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("upgrade");
        let mut frames = Vec::new();
        while let Some(message) = ws.next().await {
            match message.expect("frame") {
                WsMessage::Text(text) => {
                    frames.push(serde_json::from_str(&text).expect("json frame"))
                }
                WsMessage::Close(frame) => return (frames, frame.map(|f| f.code)),
                _ => {}
            }
        }
        (frames, None)
    }

    #[tokio::test]
    async fn failed_job_without_output_closes_normally() {
        let s = TestServer::start().await;
        let id = s.submit(wasm_job("fails", 0)).await;
        let (frames, code) = read_all(
            &s,
            &format!("/api/v1/orchestrator/jobs/{id}/logs?follow=true"),
        )
        .await;
        assert!(frames.is_empty(), "{frames:?}");
        assert_eq!(code, Some(CloseCode::Normal));
    }

    #[tokio::test]
    async fn unknown_job_is_an_error_frame() {
        let s = TestServer::start().await;
        let (frames, code) = read_all(&s, "/api/v1/orchestrator/jobs/j-nope/logs").await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0]["value"], Value::Null);
        assert!(
            frames[0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("j-nope")),
            "{frames:?}"
        );
        assert_eq!(code, Some(CloseCode::Normal));
    }

    #[tokio::test]
    async fn follow_ends_when_the_job_ends() {
        let s = TestServer::start().await;
        let id = s.submit(wasm_job("waits", 600)).await;
        let url = s
            .url(&format!("/api/v1/orchestrator/jobs/{id}/logs?follow=true"))
            .replacen("http://", "ws://", 1);
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("upgrade");
        // The stream is open and waiting; stopping the job is the change that ends it.
        let (status, _) = s.stop(&id, "", None).await;
        assert_eq!(status, 200);
        let mut code = None;
        while let Some(message) = ws.next().await {
            if let WsMessage::Close(frame) = message.expect("frame") {
                code = frame.map(|f| f.code);
                break;
            }
        }
        assert_eq!(code, Some(CloseCode::Normal));
    }

    #[tokio::test]
    async fn plain_get_returns_the_frames_as_an_array() {
        let s = TestServer::start().await;
        let id = s.submit(wasm_job("fails", 0)).await;
        let (status, body) = s
            .get(&format!("/api/v1/orchestrator/jobs/{id}/logs?tail=true"))
            .await;
        assert_eq!((status, body), (200, json!([])));
        let (status, body) = s.get("/api/v1/orchestrator/jobs/j-nope/logs").await;
        assert_eq!(status, 404);
        assert_eq!(body["Code"], "NotFound");
    }
}

//! One long-lived stream per compute node ↔ orchestrator connection for the hot path: [`Request::Deliver`]
//! and its answer, in both directions.
//!
//! request-response opens a stream per request: a yamux SYN, a protocol proposal and its confirmation, the
//! request, a close, the answer, a close, and timers (stream negotiation, request timeout, the connection going
//! idle between requests), each waking libp2p's timer thread. Every job makes two deliveries (the
//! orchestrator's AskForBid, the node's result); moving them here took about 14 % off the CPU of a job through
//! a fleet (bench/README.md). On a link a request is one frame and its answer one frame, frames queued together
//! go out in one write, and one timer per link bounds every request in flight.
//!
//! The compute node opens the link once connected to an orchestrator; either side then sends on it. A peer
//! without the protocol (an older build) gets no link and everything stays on request-response, as does any
//! request sent before the link is up or while its queue is full. A link dies with its connection; requests
//! in flight then fail as request-response ones do, and the outbox resends them (sequence numbers make the
//! resend harmless).
//!
//! Frames are length-prefixed enveloped CBOR, as on request-response streams ([`super::codec`]). Inbound
//! requests go straight to the node's event stream, waiting for room rather than being refused (the peer's
//! writes then wait on the stream's flow control), and at most [`MAX_INBOUND`] wait for their answer at once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::io::{ReadHalf, WriteHalf};
use futures::stream::FuturesUnordered;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, trace};

use super::codec::{encode_frame, read_frame};
use super::{Event, Request, Response, TransportError};
use crate::model::NodeId;

/// The link's stream protocol.
pub(super) const PROTOCOL: &str = "/cod/link/1";

/// Our requests waiting for the writer. A full queue sends the request over request-response instead.
const QUEUE: usize = 256;

/// Inbound requests awaiting their answer at once; the reader stops reading beyond this (flow control).
const MAX_INBOUND: usize = 64;

/// Frames queued together are written at once, up to about this many bytes.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Write buffer capacity kept between writes; a larger one (after a large frame) is freed.
const KEEP_BUFFER_BYTES: usize = 64 * 1024;

/// What travels on a link.
#[derive(Debug, Serialize, Deserialize)]
enum Frame {
    /// A request; the answer names the same id.
    Request {
        /// Chosen by the sender, unique per link and direction.
        id: u64,
        /// The request (boxed: it can carry a job snapshot, and the node's event stream takes it boxed).
        request: Box<Request>,
    },
    /// The answer to request `id`.
    Response {
        /// The request's id.
        id: u64,
        /// The answer.
        response: Response,
    },
    /// No answer will come to request `id` (the receiver dropped it or took too long): fail it now rather than
    /// at the sender's timeout.
    Failed {
        /// The request's id.
        id: u64,
    },
}

/// The event loop's handle on a running link. Dropping it ends the link: the reader stops at once (a
/// replaced link delivers nothing more), the writer fails what is still waiting and closes the stream.
pub(super) struct Link {
    /// Tells this link from a newer one to the same peer.
    pub(super) generation: u64,
    /// To the writer task.
    outgoing: mpsc::Sender<Outgoing>,
    /// The reader task.
    reader: tokio::task::JoinHandle<()>,
}

/// A request of ours, for the writer task to send.
struct Outgoing {
    request: Request,
    reply: oneshot::Sender<Result<Response, TransportError>>,
}

/// An inbound request's answer, awaited by the writer.
struct Awaited {
    id: u64,
    answer: oneshot::Receiver<Response>,
    /// Released once the answer is written: bounds the inbound requests in flight.
    _permit: OwnedSemaphorePermit,
}

/// Our requests awaiting an answer, shared by the reader (which answers them) and the writer (which adds them
/// and expires them).
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Result<Response, TransportError>>>,
    /// `(deadline, id)` in sending order, so deadlines are in order too (one timeout for all).
    deadlines: VecDeque<(Instant, u64)>,
    /// Set when the link has failed: nothing more is accepted.
    closed: Option<String>,
}

/// What a link task tells the event loop.
#[derive(Debug)]
pub(super) struct Closed {
    /// The peer.
    pub(super) peer: PeerId,
    /// Which link.
    pub(super) generation: u64,
}

// === impl Link ===

impl Link {
    /// Starts the reader and writer tasks of a link to `peer` over `stream`. Inbound requests go to `events`;
    /// when the link ends, `closed` hears of it.
    pub(super) fn spawn(
        peer: PeerId,
        generation: u64,
        stream: libp2p::Stream,
        events: mpsc::Sender<Event>,
        closed: mpsc::UnboundedSender<Closed>,
        timeout: Duration,
    ) -> Self {
        let (read, write) = stream.split();
        let (outgoing, outgoing_rx) = mpsc::channel(QUEUE);
        let (awaited, awaited_rx) = mpsc::unbounded_channel();
        let pending = Arc::new(Mutex::new(Pending {
            waiting: HashMap::new(),
            deadlines: VecDeque::new(),
            closed: None,
        }));
        let reader = Reader {
            peer,
            io: read,
            events,
            awaited,
            inbound: Arc::new(Semaphore::new(MAX_INBOUND)),
            pending: pending.clone(),
        };
        let writer = Writer {
            peer,
            io: write,
            outgoing: outgoing_rx,
            awaited: awaited_rx,
            answers: FuturesUnordered::new(),
            pending,
            timeout,
            next_id: 0,
            buf: Vec::new(),
        };
        let reader = tokio::spawn(async move {
            let reason = reader.run().await;
            debug!(peer = %peer, generation, reason = %reason, "link closed");
            let _ = closed.send(Closed { peer, generation });
        });
        tokio::spawn(writer.run());
        Self {
            generation,
            outgoing,
            reader,
        }
    }

    /// Queues `request`; hands it back when the link cannot take it now (full or gone), for request-response
    /// to carry instead.
    #[allow(clippy::result_large_err)] // the error is the request itself, handed back
    pub(super) fn request(
        &self,
        request: Request,
        reply: oneshot::Sender<Result<Response, TransportError>>,
    ) -> Result<(), (Request, oneshot::Sender<Result<Response, TransportError>>)> {
        self.outgoing
            .try_send(Outgoing { request, reply })
            .map_err(|e| {
                let Outgoing { request, reply } = e.into_inner();
                (request, reply)
            })
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The writer sees its queue close and ends on its own.
        self.reader.abort();
    }
}

fn lock(pending: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    // Every critical section leaves the maps consistent; a poisoned lock still holds usable state.
    pending.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fails every request waiting on a link that has ended, and refuses new ones.
fn close(pending: &Mutex<Pending>, peer: PeerId, reason: &str) {
    let waiting = {
        let mut pending = lock(pending);
        if pending.closed.is_none() {
            pending.closed = Some(reason.to_owned());
        }
        pending.deadlines.clear();
        std::mem::take(&mut pending.waiting)
    };
    for reply in waiting.into_values() {
        let _ = reply.send(Err(failed(peer, format!("the link closed: {reason}"))));
    }
}

fn node_id(peer: PeerId) -> NodeId {
    NodeId::from(peer.to_string())
}

/// A request to `peer` on this link that failed, and why.
fn failed(peer: PeerId, reason: String) -> TransportError {
    TransportError::RequestFailed {
        peer: node_id(peer),
        reason,
    }
}

/// The receiving half: frames in, requests to the event stream, answers to their callers.
struct Reader {
    peer: PeerId,
    io: ReadHalf<libp2p::Stream>,
    events: mpsc::Sender<Event>,
    /// Inbound requests' answers, for the writer to wait on.
    awaited: mpsc::UnboundedSender<Awaited>,
    inbound: Arc<Semaphore>,
    pending: Arc<Mutex<Pending>>,
}

impl Reader {
    /// Reads until the stream ends or fails; returns why.
    async fn run(mut self) -> String {
        let reason = loop {
            let frame: Frame = match read_frame(&mut self.io).await {
                Ok(frame) => frame,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break "closed".into(),
                Err(e) => break e.to_string(),
            };
            match frame {
                Frame::Request { id, request } => {
                    let Ok(permit) = self.inbound.clone().acquire_owned().await else {
                        break "shut down".into();
                    };
                    trace!(peer = %self.peer, id, "link request");
                    let (reply, answer) = oneshot::channel();
                    let event = Event::Request {
                        peer: node_id(self.peer),
                        request,
                        reply,
                    };
                    if self.events.send(event).await.is_err()
                        || self
                            .awaited
                            .send(Awaited {
                                id,
                                answer,
                                _permit: permit,
                            })
                            .is_err()
                    {
                        break "the node is shutting down".into();
                    }
                }
                Frame::Response { id, response } => self.answered(id, Ok(response)),
                Frame::Failed { id } => self.answered(
                    id,
                    Err(failed(
                        self.peer,
                        "the peer dropped the request unanswered".into(),
                    )),
                ),
            }
        };
        close(&self.pending, self.peer, &reason);
        reason
    }

    fn answered(&self, id: u64, answer: Result<Response, TransportError>) {
        // Absent when it already timed out; the late answer is dropped.
        if let Some(reply) = lock(&self.pending).waiting.remove(&id) {
            let _ = reply.send(answer);
        }
    }
}

/// The sending half: our requests and our answers out, expired requests failed.
struct Writer {
    peer: PeerId,
    io: WriteHalf<libp2p::Stream>,
    outgoing: mpsc::Receiver<Outgoing>,
    awaited: mpsc::UnboundedReceiver<Awaited>,
    /// Inbound requests' answers, each bounded by the request timeout.
    answers: FuturesUnordered<futures::future::BoxFuture<'static, (u64, Option<Response>)>>,
    pending: Arc<Mutex<Pending>>,
    timeout: Duration,
    next_id: u64,
    /// Frames encoded but not yet written.
    buf: Vec<u8>,
}

impl Writer {
    async fn run(mut self) {
        // One timer for the link, set to the oldest request still waiting.
        let timer = tokio::time::sleep(self.timeout);
        tokio::pin!(timer);
        let reason = loop {
            let next_deadline = self.next_deadline();
            if let Some(deadline) = next_deadline
                && timer.deadline() != deadline
            {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                outgoing = self.outgoing.recv() => match outgoing {
                    Some(outgoing) => self.queue(outgoing),
                    // The event loop dropped the link (connection closed, link replaced, shut down).
                    None => break "dropped".to_owned(),
                },
                Some(awaited) = self.awaited.recv() => self.wait_for(awaited),
                Some((id, answer)) = self.answers.next(), if !self.answers.is_empty() => {
                    self.answer(id, answer)
                }
                () = &mut timer, if next_deadline.is_some() => {
                    self.expire();
                    continue;
                }
            }
            // Take whatever else is ready, so frames queued together leave in one write.
            while self.buf.len() < WRITE_BATCH_BYTES {
                if let Ok(outgoing) = self.outgoing.try_recv() {
                    self.queue(outgoing);
                } else if let Ok(awaited) = self.awaited.try_recv() {
                    self.wait_for(awaited);
                } else {
                    break;
                }
            }
            if self.buf.is_empty() {
                continue;
            }
            let written = async {
                self.io.write_all(&self.buf).await?;
                self.io.flush().await
            };
            if let Err(e) = written.await {
                break e.to_string();
            }
            self.buf.clear();
            // An orchestrator holds a link per node: one large frame (an inline module) must not pin its size
            // in every link's buffer for good.
            if self.buf.capacity() > KEEP_BUFFER_BYTES {
                self.buf = Vec::new();
            }
        };
        close(&self.pending, self.peer, &reason);
        // Requests still queued fail now rather than at their callers' timeouts.
        self.outgoing.close();
        while let Ok(Outgoing { reply, .. }) = self.outgoing.try_recv() {
            let _ = reply.send(Err(failed(self.peer, format!("the link closed: {reason}"))));
        }
        let _ = self.io.close().await;
    }

    fn queue(&mut self, outgoing: Outgoing) {
        let Outgoing { request, reply } = outgoing;
        let id = self.next_id;
        self.next_id += 1;
        {
            let mut pending = lock(&self.pending);
            if let Some(reason) = &pending.closed {
                let _ = reply.send(Err(failed(self.peer, format!("the link closed: {reason}"))));
                return;
            }
            pending.waiting.insert(id, reply);
            pending
                .deadlines
                .push_back((Instant::now() + self.timeout, id));
        }
        trace!(peer = %self.peer, id, "link request out");
        let request = Box::new(request);
        self.encode(&Frame::Request { id, request });
    }

    fn wait_for(&mut self, awaited: Awaited) {
        let timeout = self.timeout;
        self.answers.push(Box::pin(async move {
            let Awaited {
                id,
                answer,
                _permit,
            } = awaited;
            let answer = tokio::time::timeout(timeout, answer)
                .await
                .ok()
                .and_then(Result::ok);
            (id, answer)
        }));
    }

    fn answer(&mut self, id: u64, answer: Option<Response>) {
        match answer {
            Some(response) => self.encode(&Frame::Response { id, response }),
            None => {
                debug!(peer = %self.peer, id, "link request dropped unanswered or not answered in time");
                self.encode(&Frame::Failed { id });
            }
        }
    }

    /// Appends `frame` to the write buffer. A frame that cannot be encoded (too large) fails its request when
    /// it is ours, or goes as [`Frame::Failed`] in place of the answer.
    fn encode(&mut self, frame: &Frame) {
        let error = match encode_frame(frame, &mut self.buf) {
            Ok(()) => return,
            Err(e) => e.to_string(),
        };
        debug!(peer = %self.peer, error = %error, "link frame not sent");
        match *frame {
            Frame::Request { id, .. } => {
                if let Some(reply) = lock(&self.pending).waiting.remove(&id) {
                    let _ = reply.send(Err(failed(self.peer, error)));
                }
            }
            Frame::Response { id, .. } => {
                let _ = encode_frame(&Frame::Failed { id }, &mut self.buf);
            }
            Frame::Failed { .. } => {}
        }
    }

    /// The deadline of the oldest request still waiting; forgets the deadlines of answered ones on the way.
    fn next_deadline(&self) -> Option<Instant> {
        let mut pending = lock(&self.pending);
        while let Some(&(deadline, id)) = pending.deadlines.front() {
            if pending.waiting.contains_key(&id) {
                return Some(deadline);
            }
            pending.deadlines.pop_front();
        }
        None
    }

    /// Fails the requests whose deadline has passed.
    fn expire(&mut self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut pending = lock(&self.pending);
            while let Some(&(deadline, id)) = pending.deadlines.front() {
                if deadline > now {
                    break;
                }
                pending.deadlines.pop_front();
                if let Some(reply) = pending.waiting.remove(&id) {
                    expired.push(reply);
                }
            }
        }
        for reply in expired {
            let _ = reply.send(Err(failed(
                self.peer,
                format!("no answer within {:?}", self.timeout),
            )));
        }
    }
}

/// One link frame as a reader takes it off the stream, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) fn read_one(frame: &[u8]) -> bool {
    let mut io = futures::io::Cursor::new(frame);
    futures::executor::block_on(read_frame::<_, Frame>(&mut io)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: &Frame) -> Frame {
        let mut buf = Vec::new();
        encode_frame(frame, &mut buf).expect("encodes");
        let mut io = futures::io::Cursor::new(buf);
        futures::executor::block_on(read_frame(&mut io)).expect("decodes")
    }

    #[test]
    fn frames_round_trip_back_to_back() {
        let request = Request::Heartbeat {
            available: Default::default(),
            running: 1,
        };
        let frames = [
            Frame::Request {
                id: 7,
                request: Box::new(request.clone()),
            },
            Frame::Response {
                id: 7,
                response: Response::Ack {
                    last_applied_seq: 3,
                },
            },
            Frame::Failed { id: u64::MAX },
        ];
        for frame in &frames {
            assert_eq!(format!("{:?}", round_trip(frame)), format!("{frame:?}"));
        }
        // Several frames in one buffer (one write) read back one by one, in order.
        let mut buf = Vec::new();
        for frame in &frames {
            encode_frame(frame, &mut buf).expect("encodes");
        }
        let mut io = futures::io::Cursor::new(buf);
        for frame in &frames {
            let read: Frame = futures::executor::block_on(read_frame(&mut io)).expect("decodes");
            assert_eq!(format!("{read:?}"), format!("{frame:?}"));
        }
    }

    #[test]
    fn a_request_response_message_is_not_a_link_frame() {
        // A peer that speaks the wrong protocol on the link is refused (the reader ends the link), not misread.
        let mut buf = Vec::new();
        encode_frame(
            &Response::Ack {
                last_applied_seq: 1,
            },
            &mut buf,
        )
        .expect("encodes");
        let mut io = futures::io::Cursor::new(buf);
        let read: std::io::Result<Frame> = futures::executor::block_on(read_frame(&mut io));
        assert_eq!(
            read.expect_err("refused").kind(),
            std::io::ErrorKind::InvalidData
        );
    }
}

//! Entry points for the cargo-fuzz targets in `tests/fuzz` (feature `fuzzing`), not an API.
//!
//! Each function feeds untrusted bytes to one parser the way the node does when a client or peer sends them,
//! and returns whatever the parser returns: an `Err` is a correct answer to bad input, and only a panic, a hang
//! or an unbounded allocation is a finding. They live here, rather than by making the parsers `pub`, so the
//! crate's internals stay `pub(crate)`.

use std::path::Path;

use bytes::Bytes;

use crate::model::spec::{EngineSpec, InputSpec, PublisherSpec};
use crate::model::{Job, resources, spec, validate};

/// The `cod job run` path: a JSON or YAML spec file, checked before it is sent.
pub fn job_spec_text(text: &str) -> bool {
    crate::cli::spec_file::parse_spec(text).is_ok()
}

/// The `PUT /api/v1/orchestrator/jobs` path: a body decoded as the API does (by content type), then what the
/// orchestrator does before storing it and what a compute node does when it bids. Returns the job when it
/// passed validation.
pub fn api_job_body(content_type: &str, body: &[u8]) -> Option<Job> {
    let body = crate::api::extract::Body::new(content_type, Bytes::copy_from_slice(body));
    let (mut job, _force) = crate::api::jobs::submitted_job(&body).ok()?;
    spec::normalize_legacy_wasm(&mut job);
    validate::validate_submission(&job).ok()?;
    use_job(&job);
    Some(job)
}

/// What the scheduler and a bidding compute node parse out of a job that passed validation.
fn use_job(job: &Job) {
    resources::job_resources(job, &resources::JobDefaults::default());
    for task in &job.tasks {
        let _ = EngineSpec::parse(&task.engine, "Engine");
        for input in &task.input_sources {
            let _ = InputSpec::parse(&input.source, "InputSources");
        }
        let _ = PublisherSpec::parse(&task.publisher);
    }
}

/// One `/cod/compute/1` request as it arrives on a stream: the length-prefixed frame, then the envelope.
pub fn wire_request_frame(frame: &[u8]) -> bool {
    let mut io = futures::io::Cursor::new(frame);
    futures::executor::block_on(
        crate::transport::read_frame::<_, crate::transport::Request>(&mut io),
    )
    .is_ok()
}

/// One `/cod/compute/1` response frame.
pub fn wire_response_frame(frame: &[u8]) -> bool {
    let mut io = futures::io::Cursor::new(frame);
    futures::executor::block_on(
        crate::transport::read_frame::<_, crate::transport::Response>(&mut io),
    )
    .is_ok()
}

/// One `/cod/link/1` frame (a request, an answer or a failure, with its id).
pub fn wire_link_frame(frame: &[u8]) -> bool {
    crate::transport::read_link_frame(frame)
}

/// An enveloped request body without the frame (what the codec hands to `decode`).
pub fn wire_request(body: &[u8]) -> Option<crate::transport::Request> {
    crate::transport::protocol::decode(body).ok()
}

/// An enveloped response body without the frame.
pub fn wire_response(body: &[u8]) -> Option<crate::transport::Response> {
    crate::transport::protocol::decode(body).ok()
}

/// A CAR stream as `cod ipfs import --car` and the gateway client read it: header, then every block,
/// verified. Returns the blocks that verified.
#[cfg(feature = "ipfs")]
pub fn car(bytes: &[u8]) -> usize {
    let Ok(mut reader) = crate::ipfs::car::CarReader::new(bytes) else {
        return 0;
    };
    let mut verified = 0;
    while let Ok(Some(block)) = reader.next_verified() {
        verified += usize::from(block.is_ok());
    }
    verified
}

/// A dag-pb block and, when it has one, its UnixFS data, as the DAG walker decodes a fetched block.
#[cfg(feature = "ipfs")]
pub fn dagpb(
    block: &[u8],
) -> Option<(
    crate::ipfs::dagpb::PbNode,
    Option<crate::ipfs::dagpb::UnixfsData>,
)> {
    let node = crate::ipfs::dagpb::PbNode::decode(&Bytes::copy_from_slice(block)).ok()?;
    let data = node
        .data
        .as_ref()
        .and_then(|d| crate::ipfs::dagpb::UnixfsData::decode(d).ok());
    Some((node, data))
}

/// An `inline` input: the `data:` URL parsed and written (or its tarball unpacked) into `scratch`.
pub fn data_url(url: &str, scratch: &Path, max_size: u64) -> bool {
    crate::storage::inline::prepare_blocking(url, scratch, max_size).is_ok()
}

#[cfg(test)]
mod tests {
    use crate::model::{Event, Execution, ExecutionId, ExecutionStateType, JobId, NodeInfo};
    use crate::transport::protocol::{Message, encode};
    use crate::transport::{Request, Response, Sequenced};

    /// Regenerates `tests/fuzz/corpus/wire/seed-*`: one encoded body of each request and response shape.
    /// Ignored because it writes into the source tree; tests/fuzz.sh runs it when those seeds are missing.
    #[test]
    #[ignore = "writes the wire seed corpus; run by tests/fuzz.sh"]
    fn write_wire_seeds() {
        let spec = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fuzz/corpus/job_spec/seed-docker.yaml"
        ))
        .expect("the docker job seed is checked in");
        let job = crate::cli::spec_file::parse_spec(&spec)
            .expect("the docker job seed is valid")
            .job;
        let execution = Execution {
            id: ExecutionId::generate(),
            job_id: JobId::generate(),
            job: Some(job),
            ..Execution::default()
        };
        let sequenced = |seq, message| Sequenced { seq, message };
        let requests = [
            Request::Handshake {
                info: NodeInfo::default(),
                last_applied_seq: 7,
                join_proof: None,
                executions: Vec::new(),
            },
            Request::Deliver {
                messages: vec![
                    sequenced(
                        1,
                        Message::AskForBid {
                            execution: Box::new(execution.clone()),
                            accept_directly: true,
                        },
                    ),
                    sequenced(
                        2,
                        Message::ExecutionProgress {
                            execution_id: execution.id.clone(),
                            job_id: execution.job_id.clone(),
                            state: ExecutionStateType::Running,
                            event: Event::new("Exec", "running"),
                        },
                    ),
                    sequenced(
                        3,
                        Message::CancelExecution {
                            execution_id: execution.id.clone(),
                            reason: "stop".into(),
                        },
                    ),
                ],
            },
            Request::ReadOutput {
                execution_id: execution.id.clone(),
                stdout_offset: 1,
                stderr_offset: 2,
            },
        ];
        let responses = [
            Response::Ack {
                last_applied_seq: 3,
            },
            Response::Output {
                stdout: b"out".to_vec(),
                stderr: Vec::new(),
                running: true,
            },
            Response::Refused {
                reason: "no".into(),
            },
        ];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus/wire");
        std::fs::create_dir_all(&dir).expect("create the wire corpus dir");
        let mut bodies: Vec<Vec<u8>> = requests
            .iter()
            .map(|r| encode(r).expect("encodes"))
            .collect();
        bodies.extend(responses.iter().map(|r| encode(r).expect("encodes")));
        for (i, body) in bodies.into_iter().enumerate() {
            // The same body framed, so the frame reader is reached too.
            let mut frame = u32::try_from(body.len())
                .expect("small")
                .to_be_bytes()
                .to_vec();
            frame.extend_from_slice(&body);
            std::fs::write(dir.join(format!("seed-{i}")), &body).expect("write a seed");
            std::fs::write(dir.join(format!("seed-{i}-framed")), &frame).expect("write a seed");
        }
    }
}

//! Framing of [`Request`]s and [`Response`]s on a libp2p stream: one frame per stream direction for the
//! request-response behaviour, a sequence of them on a [`super::link`].
//!
//! A frame is a `u32` big-endian length, then that many bytes of the enveloped CBOR from
//! [`protocol::encode`]. The length comes first so a reader can refuse an oversized frame *before* allocating
//! for it: a peer cannot make us buffer more than [`MAX_MESSAGE_BYTES`] per stream. Malformed bodies and unknown
//! wire versions become `io::ErrorKind::InvalidData`, which the behaviour reports as a failed request.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::protocol::{self, MAX_MESSAGE_BYTES, PROTOCOL_NAME};
use super::{Request, Response};

/// The stream protocol of [`PROTOCOL_NAME`].
pub(super) const PROTOCOL: StreamProtocol = StreamProtocol::new(PROTOCOL_NAME);

/// Length-prefixed CBOR codec for the `/cod/compute/1` protocol. Stateless, hence `Copy`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Codec;

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}

/// Reads one length-prefixed frame and decodes it, refusing frames over [`MAX_MESSAGE_BYTES`].
pub(crate) async fn read_frame<T, M>(io: &mut T) -> io::Result<M>
where
    T: AsyncRead + Unpin + Send,
    M: DeserializeOwned,
{
    let mut header = [0u8; 4];
    io.read_exact(&mut header).await?;
    let len = u32::from_be_bytes(header);
    let len = usize::try_from(len).map_err(|_| oversized(usize::MAX))?;
    if len > MAX_MESSAGE_BYTES {
        return Err(oversized(len));
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    protocol::decode(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Encodes `message` and writes it as one length-prefixed frame.
async fn write_frame<T, M>(io: &mut T, message: &M) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
    M: Serialize,
{
    // One write, so the muxer sends one frame rather than a 4-byte frame and then the body.
    let mut frame = Vec::new();
    encode_frame(message, &mut frame)?;
    io.write_all(&frame).await?;
    io.flush().await
}

/// Appends `message` to `buf` as one length-prefixed frame; on error `buf` is left as it was.
pub(super) fn encode_frame<M: Serialize>(message: &M, buf: &mut Vec<u8>) -> io::Result<()> {
    let body =
        protocol::encode(message).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // Refuse on the sending side too: the receiver would refuse it anyway, after we had sent 16 MiB.
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(oversized(body.len()));
    }
    let len = u32::try_from(body.len()).map_err(|_| oversized(body.len()))?;
    buf.reserve(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    Ok(())
}

/// The error for a frame over the limit.
fn oversized(len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "message of {len} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit of {PROTOCOL_NAME}"
        ),
    )
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;
    use libp2p::request_response::Codec as _;

    use super::*;
    use crate::transport::Sequenced;
    use crate::transport::protocol::Message;

    fn deliver() -> Request {
        Request::Deliver {
            messages: vec![Sequenced {
                seq: 3,
                message: Message::BidRejected {
                    execution_id: crate::model::ExecutionId::generate(),
                    reason: "lost".into(),
                },
            }],
        }
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let request = deliver();
        let mut buf = Cursor::new(Vec::new());
        Codec
            .write_request(&PROTOCOL, &mut buf, request.clone())
            .await
            .expect("writes");
        Codec
            .write_response(
                &PROTOCOL,
                &mut buf,
                Response::Ack {
                    last_applied_seq: 3,
                },
            )
            .await
            .expect("writes");
        buf.set_position(0);
        assert_eq!(
            Codec
                .read_request(&PROTOCOL, &mut buf)
                .await
                .expect("reads"),
            request
        );
        assert_eq!(
            Codec
                .read_response(&PROTOCOL, &mut buf)
                .await
                .expect("reads"),
            Response::Ack {
                last_applied_seq: 3
            }
        );
    }

    #[tokio::test]
    async fn refuses_oversized_frames_before_reading_them() {
        let len = u32::try_from(MAX_MESSAGE_BYTES + 1).expect("fits");
        // Only the header: had the codec tried to read the body it would fail with UnexpectedEof instead.
        let mut buf = Cursor::new(len.to_be_bytes().to_vec());
        let err = Codec
            .read_request(&PROTOCOL, &mut buf)
            .await
            .expect_err("oversized");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("exceeds"), "{err}");
    }

    #[tokio::test]
    async fn refuses_to_send_oversized_messages() {
        let huge = Response::Refused {
            reason: "x".repeat(MAX_MESSAGE_BYTES),
        };
        let mut buf = Cursor::new(Vec::new());
        let err = Codec
            .write_response(&PROTOCOL, &mut buf, huge)
            .await
            .expect_err("oversized");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(buf.get_ref().is_empty(), "nothing was written");
    }

    #[tokio::test]
    async fn malformed_bodies_are_invalid_data() {
        let mut frame = 2u32.to_be_bytes().to_vec();
        frame.extend_from_slice(b"\xff\x00");
        let err = Codec
            .read_response(&PROTOCOL, &mut Cursor::new(frame))
            .await
            .expect_err("malformed");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn truncated_frames_fail() {
        let mut frame = 10u32.to_be_bytes().to_vec();
        frame.extend_from_slice(b"abc");
        let err = Codec
            .read_request(&PROTOCOL, &mut Cursor::new(frame))
            .await
            .expect_err("truncated");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}

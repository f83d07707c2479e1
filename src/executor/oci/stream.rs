//! A container's stdout or stderr, capped while it runs. The container writes into a FIFO in the execution's
//! scratch folder (the runtime's helper opens it as it would open a file) and the node drains it into the
//! stream's file, keeping the first `cap` bytes and dropping the rest as it comes. So a job that prints
//! without end fills neither the node's disk nor its memory, keeps running as it would with a slow terminal,
//! and its outcome says that the output was cut, as for WASM.
//!
//! The node opens the FIFO for reading and writing: the helper's open never waits for a reader, and the read
//! side sees no end of file while the container comes and goes. Once the container is gone (every process in
//! its pid namespace is dead, so nothing else holds the write side), what is left in the pipe is drained.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use nix::sys::stat::Mode;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Bytes read from the pipe at a time (its default capacity).
const CHUNK: usize = 64 * 1024;

/// One capped stream; see the module docs.
#[derive(Debug)]
pub(super) struct CappedStream {
    /// The FIFO the container writes into (given to the runtime as the stream's path).
    fifo: PathBuf,
    /// Ends the draining once the container is gone.
    done: CancellationToken,
    /// The draining task; answers whether output was dropped.
    task: JoinHandle<io::Result<bool>>,
}

// === impl CappedStream ===

impl CappedStream {
    /// Makes the FIFO `fifo` and starts draining it into `file` (created, or appended to) up to `cap` bytes.
    pub(super) fn start(fifo: PathBuf, file: &Path, cap: u64) -> io::Result<CappedStream> {
        match std::fs::remove_file(&fifo) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        nix::unistd::mkfifo(&fifo, Mode::S_IRUSR | Mode::S_IWUSR).map_err(io::Error::from)?;
        let pipe = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&fifo)?;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)?;
        let kept = out.metadata()?.len();
        let done = CancellationToken::new();
        let task = tokio::spawn(drain(
            pipe,
            tokio::fs::File::from_std(out),
            kept,
            cap,
            done.clone(),
        ));
        Ok(CappedStream { fifo, done, task })
    }

    /// The path the container's stream goes to.
    pub(super) fn path(&self) -> &Path {
        &self.fifo
    }

    /// Drains what the gone container left in the pipe; answers whether output was dropped.
    pub(super) async fn finish(mut self) -> io::Result<bool> {
        self.done.cancel();
        let cut = (&mut self.task)
            .await
            .map_err(|e| io::Error::other(format!("the output drain failed: {e}")))?;
        let _ = tokio::fs::remove_file(&self.fifo).await;
        cut
    }
}

impl Drop for CappedStream {
    /// A run that ended early (a setup error) still ends the drain task, which would otherwise wait forever.
    fn drop(&mut self) {
        self.done.cancel();
    }
}

/// Copies `pipe` into `out` until `done`, then empties the pipe. `kept` bytes are in `out` already.
async fn drain(
    pipe: pipe::Receiver,
    mut out: tokio::fs::File,
    mut kept: u64,
    cap: u64,
    done: CancellationToken,
) -> io::Result<bool> {
    let mut buf = vec![0u8; CHUNK];
    let mut cut = false;
    loop {
        tokio::select! {
            r = pipe.readable() => r?,
            _ = done.cancelled() => break,
        }
        match pipe.try_read(&mut buf) {
            // Never 0 while this side holds the write end too; treated as the end all the same.
            Ok(0) => break,
            Ok(n) => cut |= keep(&mut out, &buf[..n], &mut kept, cap).await?,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    // The last bytes, read straight from the descriptor: tokio's cached readiness may not have seen them yet.
    let mut rest = std::fs::File::from(pipe.into_nonblocking_fd()?);
    loop {
        match rest.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => cut |= keep(&mut out, &buf[..n], &mut kept, cap).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    out.flush().await?;
    Ok(cut)
}

/// Writes what of `data` fits under `cap`; answers whether some was dropped.
async fn keep(
    out: &mut tokio::fs::File,
    data: &[u8],
    kept: &mut u64,
    cap: u64,
) -> io::Result<bool> {
    let room = usize::try_from(cap.saturating_sub(*kept)).unwrap_or(usize::MAX);
    let n = data.len().min(room);
    if n > 0 {
        out.write_all(&data[..n]).await?;
        *kept += n as u64;
    }
    Ok(n < data.len())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[tokio::test]
    async fn keeps_the_head_and_drops_the_rest() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("stdout");
        let stream =
            CappedStream::start(dir.path().join("stdout.fifo"), &file, 100_000).expect("start");
        let fifo = stream.path().to_owned();
        // A writer as the container is one: opens the path, writes, goes away.
        tokio::task::spawn_blocking(move || {
            let mut w = std::fs::OpenOptions::new()
                .append(true)
                .open(&fifo)
                .expect("open fifo");
            for _ in 0..50 {
                w.write_all(&[b'y'; 10_000]).expect("write");
            }
        })
        .await
        .expect("writer");
        assert!(stream.finish().await.expect("finish"), "output was cut");
        assert_eq!(std::fs::read(&file).expect("read").len(), 100_000);
        assert!(!dir.path().join("stdout.fifo").exists());
    }

    #[tokio::test]
    async fn short_output_is_kept_whole() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("stderr");
        let stream = CappedStream::start(dir.path().join("e.fifo"), &file, 1024).expect("start");
        let fifo = stream.path().to_owned();
        tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&fifo)
                .expect("open")
                .write_all(b"oops\n")
                .expect("write");
        })
        .await
        .expect("writer");
        assert!(!stream.finish().await.expect("finish"));
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "oops\n");
    }
}

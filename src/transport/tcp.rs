//! TCP for the swarm: tokio sockets behind `libp2p::core::Transport`, in place of libp2p-tcp.
//!
//! libp2p-tcp watches network interfaces (if-watch → rtnetlink → netlink-packet-route, nix 0.30 and a netlink
//! task at runtime) only to keep reporting addresses while a listener bound to `0.0.0.0`/`::` lives. Cod reads
//! its listen addresses once, at startup, so this transport reads the interface addresses once, when the
//! listener is bound (getifaddrs through `if-addrs`, a few KiB; netlink-packet-route alone was ~0.26 MiB).
//!
//! What stays as libp2p-tcp does it: `/ip4|ip6/<addr>/tcp/<port>` with an optional `/p2p/<id>` suffix, port 0
//! reports the port the kernel chose, IPv6 listeners are v6-only (so `0.0.0.0` and `::` can share a port),
//! `TCP_NODELAY` on every socket, a 1024 backlog, accept errors reported as non-fatal listener errors with a
//! short pause. Left out: port reuse (`SO_REUSEPORT` on listeners and binding dials to the listen port, a NAT
//! hole-punching aid Cod does not use); without it a port another process listens on is refused at bind time.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::future::{BoxFuture, Ready};
use futures::stream::SelectAll;
use futures::{FutureExt, Stream, StreamExt};
use libp2p::Multiaddr;
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::multiaddr::Protocol;
use socket2::{Domain, Socket, Type};
use tracing::debug;

/// Pending connections the kernel queues per listener (libp2p-tcp's value: a fleet of nodes reconnecting at
/// once after an orchestrator restart must not see refused SYNs).
const BACKLOG: i32 = 1024;

/// How long a listener rests after a failed accept (EMFILE and the like) before trying again, so a persistent
/// error does not spin the event loop.
const PAUSE_ON_ERROR: Duration = Duration::from_millis(100);

/// A connection as the upgrades (pnet, Noise) read it: futures' `AsyncRead`/`AsyncWrite` over tokio's stream
/// (libp2p-tcp's own wrapper; tokio-util's `compat` feature is the same adapter but would change tokio-util's build).
#[derive(Debug)]
pub(super) struct TcpStream(tokio::net::TcpStream);

impl futures::AsyncRead for TcpStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut read = tokio::io::ReadBuf::new(buf);
        std::task::ready!(tokio::io::AsyncRead::poll_read(
            Pin::new(&mut self.0),
            cx,
            &mut read
        ))?;
        Poll::Ready(Ok(read.filled().len()))
    }
}

impl futures::AsyncWrite for TcpStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write_vectored(Pin::new(&mut self.0), cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut self.0), cx)
    }
}

/// The transport: its listeners and nothing else (dials carry their own state).
#[derive(Default)]
pub(super) struct Transport {
    /// Every open listener; each ends its stream after reporting its own close.
    listeners: SelectAll<Listener>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("tcp::Transport")
            .field("listeners", &self.listeners.len())
            .finish()
    }
}

impl libp2p::core::Transport for Transport {
    type Output = TcpStream;
    type Error = io::Error;
    type ListenerUpgrade = Ready<io::Result<TcpStream>>;
    type Dial = BoxFuture<'static, io::Result<TcpStream>>;

    /// Binds at once (a taken port fails here, not on the first poll) and queues the addresses to report.
    /// Must run inside a Tokio runtime.
    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<io::Error>> {
        let socket_addr = socket_addr(&addr)
            .ok_or_else(|| TransportError::MultiaddrNotSupported(addr.clone()))?;
        let listener = bind(socket_addr).map_err(TransportError::Other)?;
        let local = listener.local_addr().map_err(TransportError::Other)?;
        let addrs = listen_addrs(local).map_err(TransportError::Other)?;
        debug!(%addr, bound = %local, "listening");
        self.listeners.push(Listener {
            id,
            listener,
            addrs: addrs.into(),
            pause: None,
            state: ListenerState::Open,
            waker: None,
        });
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        match self.listeners.iter_mut().find(|l| l.id == id) {
            Some(listener) => {
                listener.close(Ok(()));
                true
            }
            None => false,
        }
    }

    /// The connect happens when the returned future is first polled, as the trait asks.
    fn dial(
        &mut self,
        addr: Multiaddr,
        _opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<io::Error>> {
        let target = match socket_addr(&addr) {
            Some(target) if target.port() != 0 && !target.ip().is_unspecified() => target,
            _ => return Err(TransportError::MultiaddrNotSupported(addr)),
        };
        Ok(async move {
            debug!(%target, "dialing");
            let stream = tokio::net::TcpStream::connect(target).await?;
            stream.set_nodelay(true)?;
            Ok(TcpStream(stream))
        }
        .boxed())
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, io::Error>> {
        match self.listeners.poll_next_unpin(cx) {
            Poll::Ready(Some(event)) => Poll::Ready(event),
            // No listeners (`None`) is not the end of the transport: a later `listen_on` adds one, and
            // SelectAll registers the waker for it.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

/// Where a listener is in its life; closing reports [`TransportEvent::ListenerClosed`] once, then ends.
#[derive(Debug)]
enum ListenerState {
    Open,
    /// Closed; the reason waits to be reported.
    Closing(io::Result<()>),
    /// The close was reported; the stream ends.
    Closed,
}

/// One bound socket and the addresses it still has to report.
struct Listener {
    id: ListenerId,
    listener: tokio::net::TcpListener,
    /// Addresses to report as [`TransportEvent::NewAddress`] before the first connection.
    addrs: VecDeque<Multiaddr>,
    /// Set after a failed accept; the listener waits it out before accepting again.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    state: ListenerState,
    /// The task last polling this listener, woken by [`Listener::close`] so the close is reported.
    waker: Option<Waker>,
}

impl Listener {
    fn close(&mut self, reason: io::Result<()>) {
        if matches!(self.state, ListenerState::Open) {
            self.state = ListenerState::Closing(reason);
            if let Some(waker) = self.waker.take() {
                waker.wake();
            }
        }
    }
}

impl Stream for Listener {
    type Item = TransportEvent<Ready<io::Result<TcpStream>>, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match std::mem::replace(&mut this.state, ListenerState::Closed) {
            ListenerState::Open => this.state = ListenerState::Open,
            ListenerState::Closing(reason) => {
                return Poll::Ready(Some(TransportEvent::ListenerClosed {
                    listener_id: this.id,
                    reason,
                }));
            }
            ListenerState::Closed => return Poll::Ready(None),
        }
        if let Some(listen_addr) = this.addrs.pop_front() {
            return Poll::Ready(Some(TransportEvent::NewAddress {
                listener_id: this.id,
                listen_addr,
            }));
        }
        if let Some(pause) = this.pause.as_mut() {
            if pause.as_mut().poll(cx).is_pending() {
                this.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            this.pause = None;
        }
        match this.listener.poll_accept(cx) {
            Poll::Ready(Ok((stream, remote))) => {
                let accepted = stream
                    .local_addr()
                    .and_then(|local| stream.set_nodelay(true).map(|()| local));
                match accepted {
                    Ok(local) => Poll::Ready(Some(TransportEvent::Incoming {
                        listener_id: this.id,
                        upgrade: futures::future::ready(Ok(TcpStream(stream))),
                        local_addr: to_multiaddr(local),
                        send_back_addr: to_multiaddr(remote),
                    })),
                    // The peer reset the connection before we looked at it: that connection's problem, not
                    // the listener's.
                    Err(error) => Poll::Ready(Some(TransportEvent::ListenerError {
                        listener_id: this.id,
                        error,
                    })),
                }
            }
            Poll::Ready(Err(error)) => {
                this.pause = Some(Box::pin(tokio::time::sleep(PAUSE_ON_ERROR)));
                Poll::Ready(Some(TransportEvent::ListenerError {
                    listener_id: this.id,
                    error,
                }))
            }
            Poll::Pending => {
                this.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// The IP and port of `/ip4|ip6/<addr>/tcp/<port>[/p2p/<id>]`; `None` for anything else (DNS, UDP, relays).
fn socket_addr(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut parts = addr.iter();
    let ip: IpAddr = match parts.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    let Protocol::Tcp(port) = parts.next()? else {
        return None;
    };
    match (parts.next(), parts.next()) {
        (None, _) | (Some(Protocol::P2p(_)), None) => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}

fn to_multiaddr(addr: SocketAddr) -> Multiaddr {
    Multiaddr::empty()
        .with(addr.ip().into())
        .with(Protocol::Tcp(addr.port()))
}

/// A listening socket as libp2p-tcp makes one, less `SO_REUSEPORT`.
fn bind(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Tolerates TIME_WAIT leftovers of a previous run, not a live listener.
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// The addresses a listener bound to `local` answers on: `local` itself, or, bound to the unspecified
/// address, every interface address of the same family (read now; later changes are not followed).
fn listen_addrs(local: SocketAddr) -> io::Result<Vec<Multiaddr>> {
    if !local.ip().is_unspecified() {
        return Ok(vec![to_multiaddr(local)]);
    }
    let mut addrs: Vec<Multiaddr> = if_addrs::get_if_addrs()?
        .into_iter()
        .map(|iface| iface.ip())
        .filter(|ip| ip.is_ipv4() == local.is_ipv4())
        .map(|ip| to_multiaddr(SocketAddr::new(ip, local.port())))
        .collect();
    // An address on two interfaces (or listed twice) is one address to dial.
    addrs.sort_unstable_by(|a, b| a.as_ref().cmp(b.as_ref()));
    addrs.dedup();
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use futures::{AsyncReadExt, AsyncWriteExt};
    use libp2p::core::Endpoint;
    use libp2p::core::transport::{PortUse, Transport as _};

    use super::*;

    fn dial_opts() -> DialOpts {
        DialOpts {
            role: Endpoint::Dialer,
            port_use: PortUse::Reuse,
        }
    }

    async fn next_event(
        transport: &mut Transport,
    ) -> TransportEvent<Ready<io::Result<TcpStream>>, io::Error> {
        let wait = poll_fn(|cx| Pin::new(&mut *transport).poll(cx));
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("a transport event within 10 s")
    }

    #[tokio::test]
    async fn listens_on_port_zero_reports_the_real_port_and_accepts_a_dial() {
        let mut server = Transport::default();
        let id = ListenerId::next();
        server
            .listen_on(id, "/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
            .expect("listen");
        let TransportEvent::NewAddress {
            listener_id,
            listen_addr,
        } = next_event(&mut server).await
        else {
            panic!("expected the bound address first");
        };
        assert_eq!(listener_id, id);
        let port = match socket_addr(&listen_addr) {
            Some(addr) if addr.ip() == IpAddr::from([127, 0, 0, 1]) => addr.port(),
            _ => panic!("unexpected listen address {listen_addr}"),
        };
        assert_ne!(port, 0, "the kernel's port, not the requested 0");

        // A `/p2p/` suffix is accepted and ignored, as libp2p-tcp does.
        let peer = libp2p::PeerId::random();
        let mut client = Transport::default();
        let dial = client
            .dial(listen_addr.clone().with(Protocol::P2p(peer)), dial_opts())
            .expect("dial accepted");
        let (dialed, incoming) = tokio::join!(dial, next_event(&mut server));
        let mut dialed = dialed.expect("connected");
        assert!(
            dialed.0.nodelay().expect("nodelay"),
            "dials set TCP_NODELAY"
        );
        let TransportEvent::Incoming {
            upgrade,
            local_addr,
            send_back_addr,
            ..
        } = incoming
        else {
            panic!("expected the incoming connection");
        };
        assert_eq!(local_addr, listen_addr);
        let mut accepted = upgrade.await.expect("accepted");
        assert_eq!(
            socket_addr(&send_back_addr),
            Some(dialed.0.local_addr().expect("local addr"))
        );

        dialed.write_all(b"ping").await.expect("write");
        dialed.flush().await.expect("flush");
        let mut buf = [0; 4];
        accepted.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
    }

    #[tokio::test]
    async fn unspecified_address_reports_each_interface_address() {
        let mut server = Transport::default();
        let id = ListenerId::next();
        server
            .listen_on(id, "/ip4/0.0.0.0/tcp/0".parse().expect("multiaddr"))
            .expect("listen");
        let mut reported = Vec::new();
        while let Some(addr) = server
            .listeners
            .iter_mut()
            .find(|l| l.id == id)
            .and_then(|l| l.addrs.front().cloned())
        {
            let TransportEvent::NewAddress { listen_addr, .. } = next_event(&mut server).await
            else {
                panic!("expected addresses before anything else");
            };
            assert_eq!(listen_addr, addr);
            reported.push(socket_addr(&listen_addr).expect("tcp address"));
        }
        // Loopback is an interface address everywhere these tests run; no unspecified address is reported,
        // and every address carries the one port the kernel chose.
        assert!(
            reported.iter().any(|a| a.ip().is_loopback()),
            "{reported:?}"
        );
        assert!(
            reported
                .iter()
                .all(|a| a.is_ipv4() && !a.ip().is_unspecified()),
            "{reported:?}"
        );
        let port = reported[0].port();
        assert!(
            port != 0 && reported.iter().all(|a| a.port() == port),
            "{reported:?}"
        );

        // Reported addresses are dialable.
        let loopback = reported
            .iter()
            .find(|a| a.ip().is_loopback())
            .expect("loopback");
        let dial = Transport::default()
            .dial(to_multiaddr(*loopback), dial_opts())
            .expect("dial accepted");
        let (dialed, incoming) = tokio::join!(dial, next_event(&mut server));
        dialed.expect("connected");
        assert!(
            matches!(incoming, TransportEvent::Incoming { .. }),
            "{incoming:?}"
        );
    }

    #[tokio::test]
    async fn unsupported_addresses_are_refused_with_the_address() {
        let mut transport = Transport::default();
        for text in [
            "/dns4/example.com/tcp/4001",
            "/ip4/127.0.0.1/udp/4001",
            "/ip4/127.0.0.1",
            "/ip4/127.0.0.1/tcp/4001/ws",
        ] {
            let addr: Multiaddr = text.parse().expect("multiaddr");
            match transport.listen_on(ListenerId::next(), addr.clone()) {
                Err(TransportError::MultiaddrNotSupported(back)) => assert_eq!(back, addr),
                other => panic!("listen on {text}: {other:?}"),
            }
            match transport.dial(addr.clone(), dial_opts()) {
                Err(TransportError::MultiaddrNotSupported(back)) => assert_eq!(back, addr),
                Err(e) => panic!("dial {text}: {e:?}"),
                Ok(_) => panic!("dial {text} accepted"),
            }
        }
        // Nothing to connect to: port 0 and the unspecified address are listen-only.
        for text in [
            "/ip4/127.0.0.1/tcp/0",
            "/ip4/0.0.0.0/tcp/4001",
            "/ip6/::/tcp/4001",
        ] {
            let addr: Multiaddr = text.parse().expect("multiaddr");
            assert!(
                matches!(
                    transport.dial(addr, dial_opts()),
                    Err(TransportError::MultiaddrNotSupported(_))
                ),
                "dial {text}"
            );
        }
    }

    #[tokio::test]
    async fn a_taken_port_fails_at_listen_time() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}")
            .parse()
            .expect("multiaddr");
        match Transport::default().listen_on(ListenerId::next(), addr) {
            Err(TransportError::Other(e)) => assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}"),
            other => panic!("expected EADDRINUSE, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn removing_a_listener_reports_its_close_and_frees_the_port() {
        let mut transport = Transport::default();
        let id = ListenerId::next();
        transport
            .listen_on(id, "/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
            .expect("listen");
        let TransportEvent::NewAddress { listen_addr, .. } = next_event(&mut transport).await
        else {
            panic!("expected the bound address");
        };
        assert!(transport.remove_listener(id));
        assert!(
            !transport.remove_listener(ListenerId::next()),
            "unknown ids are not removed"
        );
        match next_event(&mut transport).await {
            TransportEvent::ListenerClosed {
                listener_id,
                reason: Ok(()),
            } => assert_eq!(listener_id, id),
            other => panic!("expected the close, got {other:?}"),
        }
        // The next poll ends the listener's stream, which drops its socket.
        let idle = poll_fn(|cx| Poll::Ready(Pin::new(&mut transport).poll(cx).is_pending())).await;
        assert!(idle && transport.listeners.is_empty());
        let port = socket_addr(&listen_addr).expect("tcp").port();
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free again");
    }
}

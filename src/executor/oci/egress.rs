//! `HTTP` networking for containers: the job reaches only the hosts in its `Domains` allow-list.
//!
//! The container gets a network namespace of its own with nothing in it but `lo`, so it has no route anywhere.
//! Inside that namespace, on `127.0.0.1`, the node listens with this proxy (the listening socket was created in
//! the namespace; the connections it makes upstream are the node's own), and the container's `HTTP_PROXY` and
//! `HTTPS_PROXY` point at it. The proxy speaks both HTTP proxy forms: `CONNECT host:port` (a tunnel, used for
//! HTTPS, so the proxy never sees the plaintext) and absolute-form requests (`GET http://host/path`), and
//! forwards only to allowed hosts. There is no other way out, so a program that ignores the proxy variables
//! simply has no network.
//!
//! Allow-list entries, as Bacalhau has them: a domain name (`example.org`), a leading-dot wildcard
//! (`.example.org`: the domain and every subdomain), or an IP address. Destinations that resolve to the node
//! itself (loopback, unspecified) are refused unless the node allows it, so a job cannot reach the node's own
//! API by listing `localhost`.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Longest request head the proxy reads (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// Longest wait for a request head or an upstream connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The hosts a job may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    exact: BTreeSet<String>,
    suffixes: BTreeSet<String>,
    ips: BTreeSet<IpAddr>,
    allow_loopback: bool,
}

impl AllowList {
    /// Parses a job's `Domains`. `allow_loopback` lets allowed names resolve to the node itself.
    pub fn parse(domains: &[String], allow_loopback: bool) -> Result<Self, String> {
        let mut list = AllowList {
            allow_loopback,
            ..AllowList::default()
        };
        for raw in domains {
            let d = raw.trim().trim_end_matches('.').to_ascii_lowercase();
            if let Ok(ip) = d.trim_matches(['[', ']']).parse::<IpAddr>() {
                list.ips.insert(ip);
            } else if let Some(rest) = d.strip_prefix('.') {
                check_name(raw, rest)?;
                list.suffixes.insert(rest.to_owned());
            } else {
                check_name(raw, &d)?;
                list.exact.insert(d);
            }
        }
        Ok(list)
    }

    /// Whether `host` (a name or an IP literal, as the request names it) is allowed.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            return self.ips.contains(&ip);
        }
        self.exact.contains(&host)
            || self.suffixes.iter().any(|s| {
                host == *s
                    || host
                        .strip_suffix(s.as_str())
                        .is_some_and(|p| p.ends_with('.'))
            })
    }

    /// Whether the proxy may connect to `addr`, which an allowed host resolved to.
    fn may_connect(&self, addr: &SocketAddr) -> bool {
        let ip = addr.ip();
        self.allow_loopback
            || self.ips.contains(&ip)
            || !(ip.is_loopback() || ip.is_unspecified() || is_mapped_loopback(&ip))
    }
}

fn is_mapped_loopback(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        IpAddr::V4(_) => false,
    }
}

fn check_name(raw: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "Network.Domains entry {raw:?} is not a domain name, a .wildcard or an IP address"
        ))
    }
}

/// Serves the proxy on `listener` until `shutdown`; each connection is handled on its own task.
pub fn serve(
    listener: TcpListener,
    allow: Arc<AllowList>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let connections = tokio_util::task::TaskTracker::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let (allow, stop) = (allow.clone(), shutdown.clone());
                    connections.spawn(async move {
                        tokio::select! {
                            () = stop.cancelled() => {}
                            r = handle(stream, &allow) => {
                                if let Err(e) = r {
                                    debug!(error = %e, "egress proxy connection ended");
                                }
                            }
                        }
                    });
                }
            }
        }
        connections.close();
        connections.wait().await;
    })
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    /// `CONNECT` or another method.
    method: String,
    /// Where to connect.
    host: String,
    port: u16,
    /// For absolute-form requests: the head rewritten to origin form, to send upstream.
    forward: Option<Vec<u8>>,
}

async fn handle(mut client: TcpStream, allow: &AllowList) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head_len = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_head(&mut client, &mut buf))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let head = match parse_head(&buf[..head_len]) {
        Ok(h) => h,
        Err(reason) => return refuse(&mut client, "400 Bad Request", &reason).await,
    };
    if !allow.allows(&head.host) {
        let reason = format!(
            "{} is not in this job's Network.Domains allow-list",
            head.host
        );
        return refuse(&mut client, "403 Forbidden", &reason).await;
    }
    let upstream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect(&head, allow)).await {
        Ok(Ok(s)) => s,
        Ok(Err(reason)) => return refuse(&mut client, "502 Bad Gateway", &reason).await,
        Err(_) => {
            let reason = format!("connecting to {}:{} timed out", head.host, head.port);
            return refuse(&mut client, "504 Gateway Timeout", &reason).await;
        }
    };
    let mut upstream = upstream;
    match &head.forward {
        None => {
            client
                .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                .await?;
        }
        Some(rewritten) => {
            upstream.write_all(rewritten).await?;
        }
    }
    // Bytes the client sent after the head (a request body, or a TLS hello) go first.
    upstream.write_all(&buf[head_len..]).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

async fn connect(head: &Head, allow: &AllowList) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((head.host.as_str(), head.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", head.host))?
        .collect();
    let mut last = format!("{} has no address", head.host);
    for addr in addrs {
        if !allow.may_connect(&addr) {
            last = format!(
                "{} resolves to {}, an address of the node itself, which jobs may not reach",
                head.host,
                addr.ip()
            );
            continue;
        }
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("cannot connect to {} ({addr}): {e}", head.host),
        }
    }
    Err(last)
}

async fn refuse(client: &mut TcpStream, status: &str, reason: &str) -> std::io::Result<()> {
    let body = format!("cod egress proxy: {reason}\n");
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(response.as_bytes()).await?;
    client.shutdown().await
}

/// Reads until the end of the request head; returns its length (`buf` may hold more).
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find_head_end(buf) {
            return Ok(end);
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8".to_owned())?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("malformed request line {request_line:?}"));
    };
    if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = split_host_port(target, None)?;
        return Ok(Head {
            method: "CONNECT".into(),
            host,
            port,
            forward: None,
        });
    }
    let Some(rest) = target.strip_prefix("http://") else {
        return Err(format!(
            "{target:?} is not a proxy request (use http://host/path, or CONNECT for https)"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = split_host_port(authority, Some(80))?;
    let mut forward = format!("{method} {path} {version}\r\n").into_bytes();
    for line in lines {
        let lower = line.to_ascii_lowercase();
        // Proxy hop headers are for us, not for the origin (and may carry credentials).
        if lower.starts_with("proxy-connection:") || lower.starts_with("proxy-authorization:") {
            continue;
        }
        forward.extend_from_slice(line.as_bytes());
        forward.extend_from_slice(b"\r\n");
    }
    // `lines` ended with the two empty lines of "\r\n\r\n"; one "\r\n" was written for each.
    forward.truncate(forward.len() - 2);
    Ok(Head {
        method: method.to_owned(),
        host,
        port,
        forward: Some(forward),
    })
}

fn split_host_port(authority: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    let bad = || format!("{authority:?} is not host:port");
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match (port, default_port) {
        (Some(p), _) => p.parse().map_err(|_| bad())?,
        (None, Some(d)) => d,
        (None, None) => return Err(bad()),
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(d: &[&str]) -> AllowList {
        AllowList::parse(&d.iter().map(|s| s.to_string()).collect::<Vec<_>>(), false)
            .expect("valid")
    }

    #[test]
    fn allow_list_matches_names_wildcards_and_ips() {
        let l = list(&["example.org", ".data.net", "10.1.2.3", "[::1]"]);
        assert!(l.allows("example.org"));
        assert!(l.allows("EXAMPLE.org."));
        assert!(!l.allows("www.example.org"));
        assert!(!l.allows("badexample.org"));
        assert!(l.allows("data.net"));
        assert!(l.allows("a.b.data.net"));
        assert!(!l.allows("evildata.net"));
        assert!(l.allows("10.1.2.3"));
        assert!(!l.allows("10.1.2.4"));
        assert!(l.allows("[::1]"));
        assert!(AllowList::parse(&["bad host".into()], false).is_err());
        assert!(AllowList::parse(&["".into()], false).is_err());
    }

    #[test]
    fn names_resolving_to_the_node_are_refused_unless_allowed() {
        let lo: SocketAddr = "127.0.0.1:80".parse().expect("addr");
        assert!(!list(&["localhost"]).may_connect(&lo));
        assert!(list(&["127.0.0.1"]).may_connect(&lo));
        let permissive = AllowList::parse(&["localhost".into()], true).expect("valid");
        assert!(permissive.may_connect(&lo));
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:80".parse().expect("addr");
        assert!(!list(&["x.org"]).may_connect(&mapped));
        let public: SocketAddr = "93.184.216.34:443".parse().expect("addr");
        assert!(list(&["x.org"]).may_connect(&public));
    }

    #[test]
    fn parses_both_proxy_forms() {
        let h = parse_head(b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n")
            .expect("connect");
        assert_eq!(
            (h.method.as_str(), h.host.as_str(), h.port),
            ("CONNECT", "example.org", 443)
        );
        assert!(h.forward.is_none());

        let h = parse_head(
            b"GET http://example.org:8080/a?b=1 HTTP/1.1\r\nHost: example.org:8080\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\nAccept: */*\r\n\r\n",
        )
        .expect("absolute form");
        assert_eq!((h.host.as_str(), h.port), ("example.org", 8080));
        assert_eq!(
            String::from_utf8(h.forward.expect("rewritten")).expect("utf8"),
            "GET /a?b=1 HTTP/1.1\r\nHost: example.org:8080\r\nAccept: */*\r\n\r\n"
        );
        let h = parse_head(b"GET http://[::1]/ HTTP/1.0\r\n\r\n").expect("ipv6");
        assert_eq!((h.host.as_str(), h.port), ("::1", 80));

        for bad in [
            &b"GET /relative HTTP/1.1\r\n\r\n"[..],
            b"CONNECT example.org HTTP/1.1\r\n\r\n",
            b"GARBAGE\r\n\r\n",
            b"GET https://x.org/ HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                parse_head(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[tokio::test]
    async fn proxies_allowed_hosts_and_refuses_others() {
        // An origin on loopback that answers one request.
        let origin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let origin_port = origin.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = origin.accept().await {
                let mut buf = vec![0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let seen = String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let body = format!("origin saw {seen}");
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy_addr = proxy.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let allow = Arc::new(AllowList::parse(&["127.0.0.1".into()], false).expect("valid"));
        let server = serve(proxy, allow, stop.clone());

        let ask = |req: String| async move {
            let mut s = TcpStream::connect(proxy_addr).await.expect("connect");
            s.write_all(req.as_bytes()).await.expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        };
        let out = ask(format!(
            "GET http://127.0.0.1:{origin_port}/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ))
        .await;
        assert!(out.contains("origin saw GET /hello HTTP/1.1"), "{out}");

        let out = ask(format!(
            "CONNECT 127.0.0.1:{origin_port} HTTP/1.1\r\n\r\nGET /tunnel HTTP/1.1\r\n\r\n"
        ))
        .await;
        assert!(
            out.starts_with("HTTP/1.1 200 Connection Established"),
            "{out}"
        );
        assert!(out.contains("origin saw GET /tunnel"), "{out}");

        let out = ask("GET http://example.org/ HTTP/1.1\r\n\r\n".into()).await;
        assert!(out.starts_with("HTTP/1.1 403"), "{out}");
        assert!(
            out.contains("example.org is not in this job's Network.Domains"),
            "{out}"
        );

        stop.cancel();
        server.await.expect("proxy stops");
    }
}

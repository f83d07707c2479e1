//! Network namespaces the node makes for containers: one with only `lo`, up (Docker's `none`, where
//! `localhost` still works), optionally with listening sockets the node opened inside it (the `HTTP` egress
//! proxy). The container joins it by path; the node keeps it alive by holding its file.
//!
//! `unshare(CLONE_NEWNET)` changes the namespace of the calling *thread* only, so each namespace is made on a
//! short-lived thread of its own and the node's other threads never notice.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use libcontainer::network::link::LinkClient;
use libcontainer::network::wrapper::create_network_client;

use crate::errors::chain;

/// A network namespace held open by the node.
#[derive(Debug)]
pub struct NetNs {
    file: File,
}

impl NetNs {
    /// Makes a namespace with `lo` up, and runs `inside` in it (sockets it opens stay in the namespace).
    pub fn create<T: Send + 'static>(
        inside: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<(NetNs, T)> {
        std::thread::Builder::new()
            .name("cod-netns".into())
            .spawn(move || {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
                loopback_up()?;
                let file = File::open("/proc/thread-self/ns/net")?;
                let value = inside()?;
                Ok((NetNs { file }, value))
            })?
            .join()
            .map_err(|_| std::io::Error::other("the network namespace thread panicked"))?
    }

    /// A path that opens this namespace while the node holds it (for the runtime spec).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.file.as_raw_fd()
        ))
    }
}

/// Brings `lo` up in the calling thread's network namespace, through libcontainer's netlink client (the socket
/// belongs to the namespace it is created in, so it is created here). A new namespace starts with `lo` down;
/// programs talking to themselves over 127.0.0.1 expect it up, as Docker leaves it.
pub fn loopback_up() -> std::io::Result<()> {
    let failed = |what: &str, e: &dyn std::error::Error| {
        std::io::Error::other(format!("{what}: {}", chain(e)))
    };
    let mut links =
        LinkClient::new(create_network_client()).map_err(|e| failed("opening netlink", &e))?;
    let lo = links
        .get_by_name("lo")
        .map_err(|e| failed("finding lo", &e))?;
    links
        .set_up(lo.header.index)
        .map_err(|e| failed("bringing lo up", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (CI runs as root); skipped with a note otherwise.
    #[test]
    fn namespace_has_only_a_working_loopback() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let (ns, listener) =
            NetNs::create(|| std::net::TcpListener::bind("127.0.0.1:0")).expect("creates");
        let port = listener.local_addr().expect("addr").port();
        let mine = std::fs::read_link("/proc/thread-self/ns/net").expect("ns");
        let theirs = std::fs::read_link(ns.path()).expect("held ns");
        assert_ne!(mine, theirs, "a new namespace");
        // Inside, loopback works: connect from a thread that joins it.
        let path = ns.path();
        let connected = std::thread::spawn(move || {
            let f = File::open(path)?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)?;
            std::net::TcpStream::connect(("127.0.0.1", port)).map(|_| ())
        })
        .join()
        .expect("thread");
        connected.expect("lo is up inside");
    }

    /// libcontainer's netlink clients, as OCI `linux.netDevices` uses them, against the kernel: every request
    /// cross/netlink-route-lite encodes (get a link by name, set it down, dump its addresses, move and rename
    /// it into another namespace, add addresses, set it up) and both replies it decodes.
    #[test]
    fn netlink_moves_a_device_and_its_addresses_between_namespaces() {
        use std::process::Command;

        use libcontainer::network::address::AddressClient;
        use libcontainer::network::network_device::{
            dev_change_net_namespace, setup_addresses_in_network_namespace,
        };
        use oci_spec::runtime::LinuxNetDeviceBuilder;

        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let ip = |args: &[&str]| {
            // A child spawned from a thread is born in that thread's network namespace.
            let status = Command::new("ip").args(args).status().expect("runs ip");
            assert!(status.success(), "ip {args:?}: {status}");
        };
        let (dest, ()) = NetNs::create(|| Ok(())).expect("destination namespace");
        let dest_path = dest.path();
        // In a namespace of its own: a device with an address, moved into `dest` as eth9.
        let moved = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            // A veth end: this kernel has no dummy driver (shared/reference/platform-notes.md).
            ip(&[
                "link", "add", "cod-nl0", "type", "veth", "peer", "name", "cod-nl1",
            ]);
            ip(&["addr", "add", "192.0.2.7/24", "dev", "cod-nl0"]);
            let dest = File::open(dest_path).expect("destination");
            let device = LinuxNetDeviceBuilder::default()
                .name("eth9")
                .build()
                .expect("device");
            dev_change_net_namespace("cod-nl0", dest.as_raw_fd(), &device)
                .map_err(|e| e.to_string())
        })
        .join()
        .expect("thread")
        .expect("moves the device");
        let found: Vec<(std::net::IpAddr, u8)> =
            moved.iter().map(|a| (a.address, a.prefix_len)).collect();
        assert_eq!(found, [("192.0.2.7".parse().expect("ip"), 24)]);

        let path = dest.path();
        let inside = std::thread::spawn(move || {
            let f = File::open(path).expect("ns");
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let mut links = LinkClient::new(create_network_client()).expect("client");
            let eth9 = links.get_by_name("eth9").map_err(|e| e.to_string())?;
            let index = eth9.header.index;
            let mut addrs = AddressClient::new(create_network_client()).expect("client");
            setup_addresses_in_network_namespace(&moved, index, "eth9", &mut addrs)
                .map_err(|e| e.to_string())?;
            links.set_up(index).map_err(|e| e.to_string())?;
            let up = links.get_by_name("eth9").map_err(|e| e.to_string())?;
            let listed = addrs.get_by_index(index).map_err(|e| e.to_string())?;
            Ok::<_, String>((up, listed))
        })
        .join()
        .expect("thread");
        let (up, listed) = inside.expect("eth9 is configured in the destination");
        const IFF_UP: u32 = 0x1; // linux/if.h
        assert_ne!(up.header.flags.bits() & IFF_UP, 0, "eth9 is up: {up:?}");
        let cidrs: Vec<_> = listed
            .iter()
            .map(libcontainer::network::cidr::CidrAddress::from)
            .map(|a| (a.address, a.prefix_len))
            .collect();
        assert_eq!(cidrs, found, "{listed:?}");
    }
}

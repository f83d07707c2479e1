//! Link messages: `struct ifinfomsg` (family u8, pad u8, type u16, index i32, flags u32, change u32) and
//! the attributes libcontainer sets.

use std::os::fd::RawFd;

use netlink_packet_core::DecodeError;

use crate::{nla, AddressFamily};

const HEADER: usize = 16;
const IFLA_IFNAME: u16 = 3;
const IFLA_NET_NS_FD: u16 = 28;

bitflags::bitflags! {
    /// `IFF_*` (linux/if.h).
    #[derive(Debug, PartialEq, Eq, Clone, Copy, Default)]
    pub struct LinkFlags: u32 {
        const Up = 0x1;
        const Broadcast = 0x2;
        const Debug = 0x4;
        const Loopback = 0x8;
        const Pointopoint = 0x10;
        const Notrailers = 0x20;
        const Running = 0x40;
        const Noarp = 0x80;
        const Promisc = 0x100;
        const Allmulti = 0x200;
        const Controller = 0x400;
        const Port = 0x800;
        const Multicast = 0x1000;
        const Portsel = 0x2000;
        const Automedia = 0x4000;
        const Dynamic = 0x8000;
        const LowerUp = 0x10000;
        const Dormant = 0x20000;
        const Echo = 0x40000;
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy, Default)]
pub struct LinkHeader {
    pub interface_family: AddressFamily,
    pub index: u32,
    /// `ARPHRD_*`.
    pub link_layer_type: u16,
    pub flags: LinkFlags,
    pub change_mask: LinkFlags,
}

#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum LinkAttribute {
    IfName(String),
    NetNsFd(RawFd),
    /// An attribute this crate does not model: its type and payload.
    Other(u16, Vec<u8>),
}

impl nla::Attribute for LinkAttribute {
    fn payload(&self) -> (u16, Vec<u8>) {
        match self {
            Self::IfName(name) => (IFLA_IFNAME, nla::c_string(name)),
            Self::NetNsFd(fd) => (IFLA_NET_NS_FD, fd.to_ne_bytes().to_vec()),
            Self::Other(kind, bytes) => (*kind, bytes.clone()),
        }
    }

    fn parse(kind: u16, payload: &[u8]) -> Result<Self, DecodeError> {
        Ok(match kind {
            IFLA_IFNAME => Self::IfName(nla::string(payload)?),
            IFLA_NET_NS_FD if payload.len() == 4 => Self::NetNsFd(RawFd::from_ne_bytes([
                payload[0], payload[1], payload[2], payload[3],
            ])),
            _ => Self::Other(kind, payload.to_vec()),
        })
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Default)]
#[non_exhaustive]
pub struct LinkMessage {
    pub header: LinkHeader,
    pub attributes: Vec<LinkAttribute>,
}

impl LinkMessage {
    pub(crate) fn buffer_len(&self) -> usize {
        HEADER + nla::len_all(&self.attributes)
    }

    pub(crate) fn emit(&self, buf: &mut [u8]) {
        let h = &self.header;
        buf[0] = h.interface_family.into();
        buf[1] = 0;
        buf[2..4].copy_from_slice(&h.link_layer_type.to_ne_bytes());
        buf[4..8].copy_from_slice(&h.index.to_ne_bytes());
        buf[8..12].copy_from_slice(&h.flags.bits().to_ne_bytes());
        buf[12..16].copy_from_slice(&h.change_mask.bits().to_ne_bytes());
        nla::emit_all(&mut buf[HEADER..], &self.attributes);
    }

    pub(crate) fn parse(buf: &[u8]) -> Result<Self, DecodeError> {
        if buf.len() < HEADER {
            return Err(DecodeError::from(format!(
                "link message of {} bytes, shorter than ifinfomsg",
                buf.len()
            )));
        }
        let u32_at = |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let header = LinkHeader {
            interface_family: buf[0].into(),
            link_layer_type: u16::from_ne_bytes([buf[2], buf[3]]),
            index: u32_at(4),
            flags: LinkFlags::from_bits_retain(u32_at(8)),
            change_mask: LinkFlags::from_bits_retain(u32_at(12)),
        };
        let attributes = nla::parse_all(&buf[HEADER..])?;
        Ok(Self { header, attributes })
    }
}

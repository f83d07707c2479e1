//! Address messages: `struct ifaddrmsg` (family u8, prefix length u8, flags u8, scope u8, index u32) and the
//! `IFA_*` attributes libcontainer reads and sets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::DecodeError;

use crate::{nla, AddressFamily};

const HEADER: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_LABEL: u16 = 3;
const IFA_BROADCAST: u16 = 4;
const IFA_MULTICAST: u16 = 7;

bitflags::bitflags! {
    /// The `IFA_F_*` flags that fit `ifaddrmsg`'s u8 (linux/if_addr.h).
    #[derive(Debug, Clone, Copy, Eq, PartialEq, Default)]
    pub struct AddressHeaderFlags: u8 {
        const Secondary = 0x01;
        const Nodad = 0x02;
        const Optimistic = 0x04;
        const Dadfailed = 0x08;
        const Homeaddress = 0x10;
        const Deprecated = 0x20;
        const Tentative = 0x40;
        const Permanent = 0x80;
    }
}

/// `RT_SCOPE_*` (linux/rtnetlink.h).
#[derive(Clone, Copy, Eq, PartialEq, Debug, Default)]
#[non_exhaustive]
pub enum AddressScope {
    #[default]
    Universe,
    Site,
    Link,
    Host,
    Nowhere,
    Other(u8),
}

impl From<u8> for AddressScope {
    fn from(v: u8) -> Self {
        match v {
            0 => Self::Universe,
            200 => Self::Site,
            253 => Self::Link,
            254 => Self::Host,
            255 => Self::Nowhere,
            v => Self::Other(v),
        }
    }
}

impl From<AddressScope> for u8 {
    fn from(s: AddressScope) -> u8 {
        match s {
            AddressScope::Universe => 0,
            AddressScope::Site => 200,
            AddressScope::Link => 253,
            AddressScope::Host => 254,
            AddressScope::Nowhere => 255,
            AddressScope::Other(v) => v,
        }
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Default)]
pub struct AddressHeader {
    pub family: AddressFamily,
    pub prefix_len: u8,
    pub flags: AddressHeaderFlags,
    pub scope: AddressScope,
    pub index: u32,
}

#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum AddressAttribute {
    Address(IpAddr),
    Local(IpAddr),
    Label(String),
    Broadcast(Ipv4Addr),
    Multicast(Ipv6Addr),
    /// An attribute this crate does not model: its type and payload.
    Other(u16, Vec<u8>),
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn ip_from(payload: &[u8]) -> Option<IpAddr> {
    match payload.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(payload).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(payload).ok()?)),
        _ => None,
    }
}

impl nla::Attribute for AddressAttribute {
    fn payload(&self) -> (u16, Vec<u8>) {
        match self {
            Self::Address(ip) => (IFA_ADDRESS, ip_bytes(ip)),
            Self::Local(ip) => (IFA_LOCAL, ip_bytes(ip)),
            Self::Label(label) => (IFA_LABEL, nla::c_string(label)),
            Self::Broadcast(a) => (IFA_BROADCAST, a.octets().to_vec()),
            Self::Multicast(a) => (IFA_MULTICAST, a.octets().to_vec()),
            Self::Other(kind, bytes) => (*kind, bytes.clone()),
        }
    }

    fn parse(kind: u16, payload: &[u8]) -> Result<Self, DecodeError> {
        let ip = ip_from(payload);
        Ok(match (kind, ip) {
            (IFA_ADDRESS, Some(ip)) => Self::Address(ip),
            (IFA_LOCAL, Some(ip)) => Self::Local(ip),
            (IFA_BROADCAST, Some(IpAddr::V4(a))) => Self::Broadcast(a),
            (IFA_MULTICAST, Some(IpAddr::V6(a))) => Self::Multicast(a),
            (IFA_LABEL, _) => Self::Label(nla::string(payload)?),
            _ => Self::Other(kind, payload.to_vec()),
        })
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Default)]
#[non_exhaustive]
pub struct AddressMessage {
    pub header: AddressHeader,
    pub attributes: Vec<AddressAttribute>,
}

impl AddressMessage {
    pub(crate) fn buffer_len(&self) -> usize {
        HEADER + nla::len_all(&self.attributes)
    }

    pub(crate) fn emit(&self, buf: &mut [u8]) {
        let h = &self.header;
        buf[0] = h.family.into();
        buf[1] = h.prefix_len;
        buf[2] = h.flags.bits();
        buf[3] = h.scope.into();
        buf[4..8].copy_from_slice(&h.index.to_ne_bytes());
        nla::emit_all(&mut buf[HEADER..], &self.attributes);
    }

    pub(crate) fn parse(buf: &[u8]) -> Result<Self, DecodeError> {
        if buf.len() < HEADER {
            return Err(DecodeError::from(format!(
                "address message of {} bytes, shorter than ifaddrmsg",
                buf.len()
            )));
        }
        let header = AddressHeader {
            family: buf[0].into(),
            prefix_len: buf[1],
            flags: AddressHeaderFlags::from_bits_retain(buf[2]),
            scope: buf[3].into(),
            index: u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]),
        };
        let attributes = nla::parse_all(&buf[HEADER..])?;
        Ok(Self { header, attributes })
    }
}

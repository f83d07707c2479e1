//! `netlink-packet-route`'s API for the one crate in cod's tree that uses it: libcontainer, whose netlink
//! clients move an OCI `linux.netDevices` entry into a container's network namespace and bring up the
//! loopback of cod's `network: none` containers. It sends six rtnetlink requests (get a link
//! by name, set a link up or down, move and rename it, dump and add addresses) and reads two replies
//! (`RTM_NEWLINK`, `RTM_NEWADDR`). The registry's crate models all of rtnetlink (every link kind, route, rule,
//! neighbour, traffic-control and nexthop attribute) and cost 0.46 MiB of the x86_64 edge binary's 8 MiB
//! budget, whatever libcontainer calls: the message enums' parsers are reachable from any receive.
//!
//! This crate encodes those messages from the kernel's uapi layouts (`ifinfomsg`, `ifaddrmsg`, `rtattr`), so
//! `netDevices` keeps working. What differs: a reply of any other type fails to decode with an error naming
//! it, attributes this crate does not model are kept as [`link::LinkAttribute::Other`] /
//! [`address::AddressAttribute::Other`] (type and raw bytes), and the types carry only the fields and
//! variants libcontainer names. A dependency that needs more fails the build, not a run. Tested against
//! the kernel, through libcontainer's own clients, by cod's `executor::oci::netns` tests (and every
//! `network: none` container, whose loopback comes up through it).
#![forbid(unsafe_code)]

use netlink_packet_core::{
    DecodeError, NetlinkDeserializable, NetlinkHeader, NetlinkPayload, NetlinkSerializable,
};

pub mod address;
pub mod link;
mod nla;

// rtnetlink message types (linux/rtnetlink.h).
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;

/// An address family (`AF_*`), as `ifinfomsg` and `ifaddrmsg` carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AddressFamily {
    #[default]
    Unspec,
    Inet,
    Inet6,
    Other(u8),
}

impl From<u8> for AddressFamily {
    fn from(v: u8) -> Self {
        match v {
            0 => Self::Unspec,
            2 => Self::Inet,
            10 => Self::Inet6,
            v => Self::Other(v),
        }
    }
}

impl From<AddressFamily> for u8 {
    fn from(f: AddressFamily) -> u8 {
        match f {
            AddressFamily::Unspec => 0,
            AddressFamily::Inet => 2,
            AddressFamily::Inet6 => 10,
            AddressFamily::Other(v) => v,
        }
    }
}

/// The rtnetlink messages libcontainer sends and reads.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteNetlinkMessage {
    NewLink(link::LinkMessage),
    DelLink(link::LinkMessage),
    GetLink(link::LinkMessage),
    SetLink(link::LinkMessage),
    NewAddress(address::AddressMessage),
    DelAddress(address::AddressMessage),
    GetAddress(address::AddressMessage),
}

impl RouteNetlinkMessage {
    fn body(&self) -> Body<'_> {
        match self {
            Self::NewLink(m) | Self::DelLink(m) | Self::GetLink(m) | Self::SetLink(m) => {
                Body::Link(m)
            }
            Self::NewAddress(m) | Self::DelAddress(m) | Self::GetAddress(m) => Body::Address(m),
        }
    }
}

enum Body<'a> {
    Link(&'a link::LinkMessage),
    Address(&'a address::AddressMessage),
}

impl NetlinkSerializable for RouteNetlinkMessage {
    fn message_type(&self) -> u16 {
        match self {
            Self::NewLink(_) => RTM_NEWLINK,
            Self::DelLink(_) => RTM_DELLINK,
            Self::GetLink(_) => RTM_GETLINK,
            Self::SetLink(_) => RTM_SETLINK,
            Self::NewAddress(_) => RTM_NEWADDR,
            Self::DelAddress(_) => RTM_DELADDR,
            Self::GetAddress(_) => RTM_GETADDR,
        }
    }

    fn buffer_len(&self) -> usize {
        match self.body() {
            Body::Link(m) => m.buffer_len(),
            Body::Address(m) => m.buffer_len(),
        }
    }

    fn serialize(&self, buffer: &mut [u8]) {
        match self.body() {
            Body::Link(m) => m.emit(buffer),
            Body::Address(m) => m.emit(buffer),
        }
    }
}

impl NetlinkDeserializable for RouteNetlinkMessage {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        Ok(match header.message_type {
            RTM_NEWLINK => Self::NewLink(link::LinkMessage::parse(payload)?),
            RTM_DELLINK => Self::DelLink(link::LinkMessage::parse(payload)?),
            RTM_GETLINK => Self::GetLink(link::LinkMessage::parse(payload)?),
            RTM_SETLINK => Self::SetLink(link::LinkMessage::parse(payload)?),
            RTM_NEWADDR => Self::NewAddress(address::AddressMessage::parse(payload)?),
            RTM_DELADDR => Self::DelAddress(address::AddressMessage::parse(payload)?),
            RTM_GETADDR => Self::GetAddress(address::AddressMessage::parse(payload)?),
            other => {
                return Err(DecodeError::from(format!(
                    "rtnetlink message type {other} is not one this build decodes (link and address messages only)"
                )));
            }
        })
    }
}

impl From<RouteNetlinkMessage> for NetlinkPayload<RouteNetlinkMessage> {
    fn from(message: RouteNetlinkMessage) -> Self {
        NetlinkPayload::InnerMessage(message)
    }
}

//! Preview-1 structs as bytes, exactly as the witx lays them out (little-endian, C alignment):
//! `filestat` 64 bytes, `fdstat` 24, `dirent` 24 (the name follows), `prestat` 8, `event` 32,
//! `subscription` 48.

/// `filetype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum FileType {
    /// Also what stdio and pipes report, as wasi-common does.
    Unknown = 0,
    BlockDevice = 1,
    CharacterDevice = 2,
    Directory = 3,
    RegularFile = 4,
    SocketStream = 6,
    SymbolicLink = 7,
}

// === impl FileType ===

impl FileType {
    /// The type of a host file, from its `st_mode`.
    pub(super) fn from_mode(mode: u32) -> Self {
        Self::from_host(rustix::fs::FileType::from_raw_mode(mode))
    }

    /// The type of a host file as `stat` or a directory entry gives it.
    pub(super) fn from_host(kind: rustix::fs::FileType) -> Self {
        match kind {
            rustix::fs::FileType::RegularFile => FileType::RegularFile,
            rustix::fs::FileType::Directory => FileType::Directory,
            rustix::fs::FileType::Symlink => FileType::SymbolicLink,
            rustix::fs::FileType::CharacterDevice => FileType::CharacterDevice,
            rustix::fs::FileType::BlockDevice => FileType::BlockDevice,
            rustix::fs::FileType::Socket => FileType::SocketStream,
            _ => FileType::Unknown,
        }
    }
}

/// `filestat`: what `fd_filestat_get` and `path_filestat_get` return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Filestat {
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) filetype: FileType,
    pub(super) nlink: u64,
    pub(super) size: u64,
    /// Times in nanoseconds since the epoch.
    pub(super) atim: u64,
    pub(super) mtim: u64,
    pub(super) ctim: u64,
}

// === impl Filestat ===

impl Filestat {
    /// A host file's metadata.
    pub(super) fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        let nanos = |secs: i64, nsec: i64| {
            u64::try_from(secs)
                .unwrap_or(0)
                .saturating_mul(1_000_000_000)
                .saturating_add(u64::try_from(nsec).unwrap_or(0))
        };
        Filestat {
            dev: meta.dev(),
            ino: meta.ino(),
            filetype: FileType::from_mode(meta.mode()),
            nlink: meta.nlink(),
            size: meta.size(),
            atim: nanos(meta.atime(), meta.atime_nsec()),
            mtim: nanos(meta.mtime(), meta.mtime_nsec()),
            ctim: nanos(meta.ctime(), meta.ctime_nsec()),
        }
    }

    pub(super) fn to_bytes(self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..8].copy_from_slice(&self.dev.to_le_bytes());
        b[8..16].copy_from_slice(&self.ino.to_le_bytes());
        b[16] = self.filetype as u8;
        b[24..32].copy_from_slice(&self.nlink.to_le_bytes());
        b[32..40].copy_from_slice(&self.size.to_le_bytes());
        b[40..48].copy_from_slice(&self.atim.to_le_bytes());
        b[48..56].copy_from_slice(&self.mtim.to_le_bytes());
        b[56..64].copy_from_slice(&self.ctim.to_le_bytes());
        b
    }
}

/// `fdstat`.
pub(super) fn fdstat(filetype: FileType, flags: u16, base: u64, inheriting: u64) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[0] = filetype as u8;
    b[2..4].copy_from_slice(&flags.to_le_bytes());
    b[8..16].copy_from_slice(&base.to_le_bytes());
    b[16..24].copy_from_slice(&inheriting.to_le_bytes());
    b
}

/// `dirent`, without the name that follows it.
pub(super) fn dirent(next: u64, ino: u64, name_len: u32, filetype: FileType) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[0..8].copy_from_slice(&next.to_le_bytes());
    b[8..16].copy_from_slice(&ino.to_le_bytes());
    b[16..20].copy_from_slice(&name_len.to_le_bytes());
    b[20] = filetype as u8;
    b
}

/// `prestat` of a preopened directory whose name is `name_len` bytes.
pub(super) fn prestat_dir(name_len: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[4..8].copy_from_slice(&name_len.to_le_bytes());
    b
}

/// `eventtype`.
pub(super) const EVENT_CLOCK: u8 = 0;
pub(super) const EVENT_FD_READ: u8 = 1;
pub(super) const EVENT_FD_WRITE: u8 = 2;

/// `event`: `nbytes` and `flags` only mean something for fd events.
pub(super) fn event(userdata: u64, errno: u16, kind: u8, nbytes: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0..8].copy_from_slice(&userdata.to_le_bytes());
    b[8..10].copy_from_slice(&errno.to_le_bytes());
    b[10] = kind;
    b[16..24].copy_from_slice(&nbytes.to_le_bytes());
    b
}

/// A decoded `subscription`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Subscription {
    pub(super) userdata: u64,
    pub(super) kind: SubscriptionKind,
}

/// What a subscription waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SubscriptionKind {
    /// A clock reaching `timeout` (absolute on that clock when `absolute`, else from now).
    Clock {
        id: u32,
        timeout: u64,
        absolute: bool,
    },
    /// An fd becoming readable.
    Read(u32),
    /// An fd becoming writable.
    Write(u32),
    /// An `eventtype` this layer does not know; answered with `EINVAL`.
    Unknown(u8),
}

/// Size of one `subscription`.
pub(super) const SUBSCRIPTION_SIZE: u32 = 48;

// === impl Subscription ===

impl Subscription {
    pub(super) fn parse(b: &[u8]) -> Self {
        let u64_at = |i: usize| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(raw)
        };
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let kind = match b[8] {
            EVENT_CLOCK => SubscriptionKind::Clock {
                id: u32_at(16),
                timeout: u64_at(24),
                absolute: b[40] & 1 == 1,
            },
            EVENT_FD_READ => SubscriptionKind::Read(u32_at(16)),
            EVENT_FD_WRITE => SubscriptionKind::Write(u32_at(16)),
            other => SubscriptionKind::Unknown(other),
        };
        Subscription {
            userdata: u64_at(0),
            kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filestat_is_byte_exact() {
        let stat = Filestat {
            dev: 0x0102,
            ino: 0x0304,
            filetype: FileType::RegularFile,
            nlink: 2,
            size: 5,
            atim: 6,
            mtim: 7,
            ctim: 8,
        };
        let mut want = [0u8; 64];
        want[0] = 0x02;
        want[1] = 0x01;
        want[8] = 0x04;
        want[9] = 0x03;
        want[16] = 4;
        want[24] = 2;
        want[32] = 5;
        want[40] = 6;
        want[48] = 7;
        want[56] = 8;
        assert_eq!(stat.to_bytes(), want);
    }

    #[test]
    fn fdstat_dirent_prestat_and_event_are_byte_exact() {
        let f = fdstat(FileType::Directory, 1, 0x0a0b, 0xff);
        assert_eq!(f[0], 3);
        assert_eq!(&f[2..4], &[1, 0]);
        assert_eq!(&f[8..10], &[0x0b, 0x0a]);
        assert_eq!(f[16], 0xff);

        let d = dirent(3, 0x99, 5, FileType::SymbolicLink);
        let mut want = [0u8; 24];
        want[0] = 3;
        want[8] = 0x99;
        want[16] = 5;
        want[20] = 7;
        assert_eq!(d, want);

        assert_eq!(prestat_dir(1), [0, 0, 0, 0, 1, 0, 0, 0]);

        let e = event(0x1122, 28, EVENT_FD_WRITE, 9);
        let mut want = [0u8; 32];
        want[0] = 0x22;
        want[1] = 0x11;
        want[8] = 28;
        want[10] = 2;
        want[16] = 9;
        assert_eq!(e, want);
    }

    #[test]
    fn subscriptions_decode_at_their_offsets() {
        let mut b = [0u8; 48];
        b[0] = 7; // userdata
        b[8] = EVENT_CLOCK;
        b[16] = 1; // monotonic
        b[24..32].copy_from_slice(&1_000u64.to_le_bytes());
        b[40] = 1; // abstime
        assert_eq!(
            Subscription::parse(&b),
            Subscription {
                userdata: 7,
                kind: SubscriptionKind::Clock {
                    id: 1,
                    timeout: 1_000,
                    absolute: true
                }
            }
        );
        b[8] = EVENT_FD_READ;
        b[16] = 4;
        assert_eq!(Subscription::parse(&b).kind, SubscriptionKind::Read(4));
        b[8] = 9;
        assert_eq!(Subscription::parse(&b).kind, SubscriptionKind::Unknown(9));
    }
}

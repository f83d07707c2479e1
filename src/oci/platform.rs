//! The platform (OS, CPU architecture, variant) an image is built for, and which image platforms this node
//! can run.
//!
//! Names follow the OCI image spec (Go's `GOOS`/`GOARCH`): `linux`, `amd64`, `arm64`, `arm` + `v7`. Aliases
//! seen in the wild (`x86_64`, `aarch64`, `armhf`) are normalised first, as containerd does, so that
//! `arm64` and `arm64/v8` are the same platform.
//!
//! Matching is strict about the OS and the architecture: a 64-bit ARM node does not fall back to 32-bit ARM
//! images, because many arm64 kernels (and boards) lack AArch32 support. Only 32-bit ARM variants are
//! ordered: a `v7` node runs `v7`, `v6` and `v5` images and prefers the highest.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An image platform, normalised (lower-case, canonical architecture names, canonical variant).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU architecture, e.g. `amd64`, `arm64`, `arm`.
    pub architecture: String,
    /// CPU variant, e.g. `v7` for `arm`; `None` where the architecture has one baseline (`amd64`, `arm64`).
    pub variant: Option<String>,
}

/// A platform string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {0:?}: expected OS/ARCH[/VARIANT], e.g. linux/arm64 or linux/arm/v7")]
pub struct PlatformParseError(pub String);

// === impl Platform ===

impl Platform {
    /// A platform from its parts, normalised (see the module docs).
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        let os = os.to_ascii_lowercase();
        let arch = architecture.to_ascii_lowercase();
        let variant = variant
            .map(str::to_ascii_lowercase)
            .filter(|v| !v.is_empty());
        let (architecture, variant) = match arch.as_str() {
            "x86_64" | "x86-64" | "amd64" => {
                // v1 is the amd64 baseline; v2..v4 would need CPU feature checks we do not make, so they stay
                // distinct and do not match a plain amd64 node.
                let variant = variant.filter(|v| v != "v1");
                ("amd64".to_owned(), variant)
            }
            "aarch64" | "arm64" => {
                let variant = variant.filter(|v| !matches!(v.as_str(), "8" | "v8" | "v8.0"));
                ("arm64".to_owned(), variant)
            }
            "armhf" => ("arm".to_owned(), Some("v7".to_owned())),
            "armel" => ("arm".to_owned(), Some("v6".to_owned())),
            "arm" => {
                // containerd's rule: a bare `arm` is v7; bare numbers gain the `v`.
                let variant = match variant.as_deref() {
                    None | Some("7") => "v7".to_owned(),
                    Some(n @ ("5" | "6" | "8")) => format!("v{n}"),
                    Some(v) => v.to_owned(),
                };
                ("arm".to_owned(), Some(variant))
            }
            "i386" | "i686" | "x86" => ("386".to_owned(), variant),
            _ => (arch, variant),
        };
        Platform {
            os,
            architecture,
            variant,
        }
    }

    /// The platform this node runs: `linux` and the architecture this binary was built for; for 32-bit ARM the
    /// variant is read from the CPU (`/proc/cpuinfo`), since one ARMv6 build also runs on ARMv7 boards.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "powerpc64" => "ppc64",
            "loongarch64" => "loong64",
            "mips64" if cfg!(target_endian = "little") => "mips64le",
            other => other,
        };
        let variant = if arch == "arm" {
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            // Without cpuinfo, guess the common armhf boards (ARMv7).
            Some(arm_variant_from_cpuinfo(&cpuinfo).unwrap_or("v7"))
        } else {
            None
        };
        Platform::new("linux", arch, variant)
    }

    /// How well this (node) platform runs an image built for `image`: `None` if it cannot, otherwise a rank,
    /// higher being a closer match.
    pub fn rank(&self, image: &Platform) -> Option<u32> {
        let image = Platform::new(&image.os, &image.architecture, image.variant.as_deref());
        if image.os != self.os || image.architecture != self.architecture {
            return None;
        }
        if self.architecture == "arm" {
            let level = |v: &Option<String>| {
                v.as_deref()
                    .and_then(|v| v.strip_prefix('v'))
                    .and_then(|n| n.parse::<u32>().ok())
            };
            let (node, img) = (level(&self.variant)?, level(&image.variant)?);
            return (img <= node).then_some(img);
        }
        (image.variant == self.variant).then_some(1)
    }

    /// Whether this (node) platform runs images built for `image`.
    pub fn runs(&self, image: &Platform) -> bool {
        self.rank(image).is_some()
    }

    /// The index of the best match for this (node) platform among `candidates` (the first one on ties).
    pub fn pick(&self, candidates: &[Platform]) -> Option<usize> {
        let mut best: Option<(usize, u32)> = None;
        for (i, c) in candidates.iter().enumerate() {
            if let Some(rank) = self.rank(c)
                && best.is_none_or(|(_, r)| rank > r)
            {
                best = Some((i, rank));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// The ARM variant named by `/proc/cpuinfo`'s "CPU architecture" line (containerd reads the same field).
fn arm_variant_from_cpuinfo(cpuinfo: &str) -> Option<&'static str> {
    // ARM1176 boards (Raspberry Pi 1 and Zero) report "CPU architecture: 7" through a kernel quirk; their
    // model name tells the truth, and containerd corrects for it the same way.
    if cpuinfo.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("model name") && l.contains("armv6-compatible")
    }) {
        return Some("v6");
    }
    let line = cpuinfo
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("cpu architecture"))?;
    let value = line.split_once(':')?.1.trim().to_ascii_lowercase();
    let variant = match value.as_str() {
        "8" | "aarch64" => "v8",
        v if v.starts_with('7') => "v7",
        v if v.starts_with('6') => "v6",
        v if v.starts_with('5') => "v5",
        _ => return None,
    };
    Some(variant)
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = PlatformParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => {
                Ok(Platform::new(os, arch, Some(variant)))
            }
            _ => Err(PlatformParseError(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().expect("platform")
    }

    #[test]
    fn normalises_aliases_and_variants() {
        assert_eq!(p("linux/aarch64"), p("linux/arm64"));
        assert_eq!(p("linux/arm64/v8"), p("linux/arm64"));
        assert_eq!(p("Linux/x86_64"), p("linux/amd64"));
        assert_eq!(p("linux/amd64/v1"), p("linux/amd64"));
        assert_eq!(p("linux/arm"), p("linux/arm/v7"));
        assert_eq!(p("linux/armhf"), p("linux/arm/v7"));
        assert_eq!(p("linux/arm/6"), p("linux/arm/v6"));
        assert_eq!(p("linux/arm64/v8").to_string(), "linux/arm64");
        assert_eq!(p("linux/arm/v7").to_string(), "linux/arm/v7");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//x".parse::<Platform>().is_err());
        assert!("a/b/c/d".parse::<Platform>().is_err());
    }

    #[test]
    fn host_is_linux_with_a_canonical_architecture() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        assert_eq!(
            host,
            Platform::new(&host.os, &host.architecture, host.variant.as_deref())
        );
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host, p("linux/amd64"));
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(host, p("linux/arm64"));
        }
        assert!(host.runs(&host));
    }

    #[test]
    fn arm64_matches_with_or_without_v8() {
        let node = p("linux/arm64");
        assert!(node.runs(&Platform::new("linux", "arm64", Some("v8"))));
        assert!(node.runs(&Platform::new("linux", "arm64", None)));
        assert!(!node.runs(&p("linux/arm/v7")), "no 32-bit fallback");
        assert!(!node.runs(&p("linux/amd64")));
        assert!(!node.runs(&p("windows/arm64")));
    }

    #[test]
    fn arm_prefers_the_highest_variant_it_can_run() {
        let v7 = p("linux/arm/v7");
        let candidates = [
            p("linux/amd64"),
            p("linux/arm/v6"),
            p("linux/arm/v7"),
            p("linux/arm/v8"),
        ];
        assert_eq!(v7.pick(&candidates), Some(2));
        assert_eq!(p("linux/arm/v6").pick(&candidates), Some(1));
        assert_eq!(p("linux/arm/v8").pick(&candidates), Some(3));
        assert_eq!(p("linux/arm/v5").pick(&candidates), None);
        assert!(v7.runs(&p("linux/arm/v5")));
    }

    #[test]
    fn amd64_takes_the_baseline_only_and_picks_the_first_tie() {
        let node = p("linux/amd64");
        assert!(!node.runs(&p("linux/amd64/v3")));
        let candidates = [
            Platform::new("unknown", "unknown", None),
            p("linux/amd64"),
            p("linux/amd64/v1"),
        ];
        assert_eq!(node.pick(&candidates), Some(1));
        assert_eq!(node.pick(&[]), None);
    }

    #[test]
    fn reads_the_arm_variant_from_cpuinfo() {
        let pi_zero = "processor\t: 0\nmodel name\t: ARMv6-compatible processor rev 7 (v6l)\n\
                       CPU architecture: 7\n";
        assert_eq!(arm_variant_from_cpuinfo(pi_zero), Some("v6"));
        assert_eq!(
            arm_variant_from_cpuinfo("CPU architecture: 7\n"),
            Some("v7")
        );
        assert_eq!(
            arm_variant_from_cpuinfo("CPU architecture: 6TEJ\n"),
            Some("v6")
        );
        assert_eq!(
            arm_variant_from_cpuinfo("CPU architecture: 8\n"),
            Some("v8")
        );
        assert_eq!(
            arm_variant_from_cpuinfo("CPU architecture: AArch64\n"),
            Some("v8")
        );
        assert_eq!(arm_variant_from_cpuinfo("nothing here"), None);
    }
}

//! `--platform os/arch[/variant]`: which image of a multi-platform index to import, and how
//! an index entry's platform fits the one asked.
//!
//! Chosen as containerd and docker choose:
//! - os and architecture must be the ones asked (`x86_64` is `amd64`, `aarch64` is `arm64`).
//! - A variant asked (`linux/amd64/v3`): that variant, else the highest lower one of the same
//!   line (v2, then v1 = no variant), as a v3 machine runs v2 code.
//! - No variant asked (the default, `linux/<this machine's arch>`): the entry without a
//!   variant (or with the architecture's base one: amd64 `v1`, arm64 `v8`, arm `v7`), else
//!   the highest variant this machine's CPU runs (amd64: v2..v4 from its CPU features).
//!
//! An entry without a `platform` field fits nothing here; the index code decides for those.

use std::fmt;

/// Where the platform asked came from (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// This machine's, by default.
    Host,
    /// `--platform`.
    Flag,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
    pub origin: Origin,
}

/// OCI's name of an architecture (Go's GOARCH), from Rust's or uname's.
pub fn normalize_arch(arch: &str) -> String {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "x86" | "i386" | "i686" => "386",
        "powerpc64le" | "ppc64el" => "ppc64le",
        other => other,
    }
    .to_string()
}

/// The variant an entry without one stands for (`None`: the architecture has no variants).
fn base_variant(arch: &str) -> Option<&'static str> {
    match arch {
        "amd64" => Some("v1"),
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    }
}

/// A variant's place in its line: `v3` -> 3.0, `v8.2` -> 8.2 (`None`: not a `vN[.M]`).
fn level(variant: &str) -> Option<(u32, u32)> {
    let rest = variant.strip_prefix('v')?;
    let (major, minor) = rest.split_once('.').unwrap_or((rest, "0"));
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The highest amd64 micro-architecture level (x86-64-v1..v4) this CPU runs.
#[cfg(target_arch = "x86_64")]
pub fn host_amd64_level() -> u32 {
    use std::arch::is_x86_feature_detected as has;
    let v2 = has!("cmpxchg16b")
        && has!("popcnt")
        && has!("sse3")
        && has!("ssse3")
        && has!("sse4.1")
        && has!("sse4.2");
    let v3 = v2
        && has!("avx")
        && has!("avx2")
        && has!("bmi1")
        && has!("bmi2")
        && has!("f16c")
        && has!("fma")
        && has!("lzcnt")
        && has!("movbe")
        && has!("xsave");
    let v4 = v3
        && has!("avx512f")
        && has!("avx512bw")
        && has!("avx512cd")
        && has!("avx512dq")
        && has!("avx512vl");
    1 + u32::from(v2) + u32::from(v3) + u32::from(v4)
}

#[cfg(not(target_arch = "x86_64"))]
pub fn host_amd64_level() -> u32 {
    0
}

impl Platform {
    /// This machine's: `linux/<arch>`, no variant.
    pub fn host() -> Platform {
        Platform {
            os: "linux".into(),
            arch: normalize_arch(std::env::consts::ARCH),
            variant: None,
            origin: Origin::Host,
        }
    }

    /// Parses `os/arch[/variant]` (as `docker pull --platform` takes it).
    pub fn parse(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
            return Err(format!(
                "{s:?}: expected os/arch or os/arch/variant, e.g. linux/amd64 or linux/arm64/v8"
            ));
        }
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            arch: normalize_arch(&parts[1].to_ascii_lowercase()),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
            origin: Origin::Flag,
        })
    }

    /// How well an entry for `os/arch/variant` fits: `None` not at all, else higher is better.
    /// `host_level` is [`host_amd64_level`] (a parameter, for tests).
    pub fn fit(&self, os: &str, arch: &str, variant: Option<&str>, host_level: u32) -> Option<u32> {
        let arch = normalize_arch(arch);
        if os != self.os || arch != self.arch {
            return None;
        }
        let base = base_variant(&arch);
        // An entry's variant as a level of its line; no variant is the base one.
        let entry = variant.filter(|v| !v.is_empty()).or(base);
        match (&self.variant, entry) {
            (Some(want), Some(got)) if want == got => Some(u32::MAX),
            (Some(want), Some(got)) => {
                let (w, g) = (level(want)?, level(got)?);
                (g < w).then_some(g.0 * 100 + g.1)
            }
            // The architecture has no variants: the variant asked cannot be met otherwise.
            (Some(_), None) => None,
            (None, got) if got == base => Some(u32::MAX),
            (None, Some(got)) if arch == "amd64" && arch == Platform::host().arch => {
                let g = level(got)?;
                (g.0 <= host_level && g.1 == 0).then_some(g.0 * 100)
            }
            (None, _) => None,
        }
    }

    /// The message's words for who asked: "this machine (linux/amd64)" or "--platform
    /// linux/arm64/v8".
    pub fn asked(&self) -> String {
        match self.origin {
            Origin::Host => format!("this machine ({self})"),
            Origin::Flag => format!("--platform {self}"),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_os_arch_and_variant() {
        assert_eq!(p("linux/amd64").to_string(), "linux/amd64");
        assert_eq!(p("linux/x86_64").arch, "amd64");
        assert_eq!(p("Linux/ARM64/V8").to_string(), "linux/arm64/v8");
        assert_eq!(p("linux/amd64/v3").variant.as_deref(), Some("v3"));
        for bad in [
            "",
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v3/x",
            "linux/am d64",
        ] {
            assert!(Platform::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Platform::host().origin, Origin::Host);
        assert_eq!(Platform::host().variant, None);
    }

    #[test]
    fn no_variant_asked_prefers_the_entry_without_one_then_the_best_the_cpu_runs() {
        let host = Platform {
            arch: "amd64".into(),
            ..Platform::host()
        };
        let amd = |v| host.fit("linux", "amd64", v, 3);
        let plain = amd(None);
        assert_eq!(plain, Some(u32::MAX));
        assert_eq!(amd(Some("v1")), plain, "v1 is amd64 without a variant");
        assert!(amd(Some("v3")).is_some_and(|v3| v3 < u32::MAX));
        assert!(amd(Some("v2")) < amd(Some("v3")));
        assert_eq!(amd(Some("v4")), None, "a v3 machine does not run v4");
        assert_eq!(host.fit("linux", "arm64", None, 3), None);
        assert_eq!(host.fit("windows", "amd64", None, 3), None);
        assert_eq!(host.fit("linux", "x86_64", None, 3), Some(u32::MAX));
    }

    #[test]
    fn a_variant_asked_takes_it_else_the_highest_lower_one() {
        let v3 = p("linux/amd64/v3");
        let fit = |v| v3.fit("linux", "amd64", v, 1);
        assert_eq!(
            fit(Some("v3")),
            Some(u32::MAX),
            "asked: whatever this CPU runs"
        );
        assert!(fit(Some("v2")) > fit(None));
        assert!(fit(None).is_some(), "no variant is v1");
        assert_eq!(fit(Some("v4")), None);
        let arm = p("linux/arm64/v8");
        assert_eq!(arm.fit("linux", "arm64", None, 0), Some(u32::MAX));
        assert_eq!(arm.fit("linux", "arm64", Some("v8"), 0), Some(u32::MAX));
        let arm = p("linux/arm64");
        assert_eq!(arm.fit("linux", "arm64", Some("v8"), 0), Some(u32::MAX));
        assert_eq!(
            arm.fit("linux", "arm64", Some("v9"), 4),
            None,
            "not this CPU's line"
        );
        assert_eq!(p("linux/s390x/v1").fit("linux", "s390x", None, 0), None);
    }
}

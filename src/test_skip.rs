//! One skip policy for tests that need something of the machine: root, the kernel's erofs
//! or `mkfs.erofs`. With `IMAGEFS_TESTS_STRICT=1` a test that lacks one fails; otherwise it
//! prints `SKIP <test>: needs <reason>` to stderr and returns. A stand-in, with the same
//! signature, for `imagefs_erofs::testing::{need, Need}`, which replaces it once the erofs
//! reader is its own crate.

use std::process::Command;
use std::sync::OnceLock;

/// What a test may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // Root and KernelErofs: for tests outside store and admin.
pub(crate) enum Need {
    Root,
    KernelErofs,
    MkfsErofs,
}

impl Need {
    fn met(self) -> bool {
        match self {
            Need::Root => nix::unistd::geteuid().is_root(),
            Need::KernelErofs => std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| {
                s.lines()
                    .any(|l| l.split_whitespace().last() == Some("erofs"))
            }),
            Need::MkfsErofs => {
                static FOUND: OnceLock<bool> = OnceLock::new();
                *FOUND.get_or_init(|| Command::new("mkfs.erofs").arg("--help").output().is_ok())
            }
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Need::Root => "root",
            Need::KernelErofs => "the kernel's erofs",
            Need::MkfsErofs => "mkfs.erofs",
        }
    }
}

/// Whether `test` can run: every need in `what` is met. If not, it panics under
/// `IMAGEFS_TESTS_STRICT=1`, else says `SKIP <test>: needs <reason>` on stderr.
pub(crate) fn need(what: &[Need], test: &str) -> bool {
    let missing: Vec<&str> = what
        .iter()
        .filter(|n| !n.met())
        .map(|n| n.reason())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: needs {}", missing.join(", "));
    if std::env::var("IMAGEFS_TESTS_STRICT").is_ok_and(|v| v == "1") {
        panic!("{msg} (IMAGEFS_TESTS_STRICT=1)");
    }
    eprintln!("SKIP {msg}");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_needed_always_runs() {
        assert!(need(&[], "nothing_needed_always_runs"));
    }
}

//! Helpers for tests (feature `testing`): one skip policy, and the walk and
//! mutation targets shared by the mutation test and the fuzz target.
//!
//! # Skip policy
//! A test that cannot run here because the machine lacks root, the kernel's
//! erofs or `mkfs.erofs` calls [`need`] first. Without them it prints
//! `SKIP <test>: needs <reason>` to stderr and returns (it passes); with
//! `IMAGEFS_TESTS_STRICT=1` (CI) it fails instead, so nothing skips unseen.

use std::collections::HashSet;
use std::process::Command;

use crate::inode::{Layout, inode_pos};
use crate::{FileKind, Image};

/// The variable that turns skips into failures (set and not `0`).
pub const STRICT_VAR: &str = "IMAGEFS_TESTS_STRICT";

/// What a test may need from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Effective uid 0 (mounts, `chown`, device nodes, `trusted.*` xattrs).
    Root,
    /// The kernel's erofs driver (listed in `/proc/filesystems`).
    KernelErofs,
    /// `mkfs.erofs` on `PATH`.
    MkfsErofs,
}

impl Need {
    fn present(self) -> bool {
        match self {
            Need::Root => effective_uid() == Some(0),
            Need::KernelErofs => std::fs::read_to_string("/proc/filesystems")
                .is_ok_and(|s| s.split_whitespace().any(|w| w == "erofs")),
            Need::MkfsErofs => Command::new("mkfs.erofs").arg("--help").output().is_ok(),
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Need::Root => "root",
            Need::KernelErofs => "kernel erofs",
            Need::MkfsErofs => "mkfs.erofs",
        }
    }
}

/// The effective uid, from `/proc/self/status` (this crate has no `unsafe`).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Whether skips are failures (`IMAGEFS_TESTS_STRICT` set, not empty, not `0`).
pub fn strict() -> bool {
    std::env::var(STRICT_VAR).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Whether `test` can run (true: go ahead). When something in `what` is
/// missing: panics if [`strict`], otherwise prints `SKIP <test>: needs
/// <reason>` to stderr and returns false (the test should return).
pub fn need(what: &[Need], test: &str) -> bool {
    let missing: Vec<&str> = what
        .iter()
        .filter(|n| !n.present())
        .map(|n| n.reason())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let reason = missing.join(", ");
    assert!(
        !strict(),
        "{test}: needs {reason} ({STRICT_VAR} is set, so it may not skip)"
    );
    eprintln!("SKIP {test}: needs {reason}");
    false
}

/// What [`walk_all`] saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Walked {
    /// Distinct inodes visited.
    pub inodes: usize,
    /// File bytes read.
    pub bytes: u64,
    /// Operations that returned an error.
    pub errors: usize,
}

/// Visit everything reachable from the root, at most `budget` inodes (the
/// budget is decremented), ignoring errors: attributes and xattrs of each,
/// directory listings (at most 20,000 entries each) with a lookup of every
/// name and some resumed listings, the first MiB of each regular file and a
/// read in its middle, symlink targets.
pub fn walk_all(img: &Image, budget: &mut u64) -> Walked {
    let mut errors = 0usize;
    let mut seen = HashSet::new();
    let mut stack = vec![img.root()];
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 128 * 1024];
    while let Some(nid) = stack.pop() {
        if !seen.insert(nid) || *budget == 0 {
            continue;
        }
        *budget -= 1;
        let Ok(ino) = img.inode(nid) else {
            errors += 1;
            continue;
        };
        errors += usize::from(img.xattrs(nid).is_err());
        match ino.kind {
            FileKind::Directory => {
                let mut names = Vec::new();
                let r = img.readdir(nid, 0, |e| {
                    names.push((e.name.to_vec(), e.nid, e.offset));
                    names.len() < 20_000
                });
                errors += usize::from(r.is_err());
                for (name, child, off) in names {
                    let _ = img.lookup(nid, &name);
                    if off % 5 == 0 {
                        let _ = img.readdir(nid, off, |_| false);
                    }
                    stack.push(child);
                }
            }
            FileKind::Regular => {
                let mut off = 0u64;
                while off < ino.size.min(1 << 20) {
                    match img.read(nid, off, &mut buf) {
                        Ok(0) => break,
                        Err(_) => {
                            errors += 1;
                            break;
                        }
                        Ok(n) => {
                            bytes += n as u64;
                            off += n as u64;
                        }
                    }
                }
                let _ = img.read(nid, ino.size / 3, &mut buf[..5000]);
            }
            FileKind::Symlink => {
                let _ = img.readlink(nid);
            }
            _ => {}
        }
    }
    Walked {
        inodes: seen.len(),
        bytes,
        errors,
    }
}

/// Byte ranges `(start, len)` of an image of `len` bytes worth mutating:
/// the superblock, and the neighbourhood of every inode and directory block
/// (of the first 400 inodes reached).
pub fn mutation_targets(img: &Image, len: usize) -> Vec<(u64, u64)> {
    let mut v = vec![(1024u64, 128u64)];
    let mut stack = vec![img.root()];
    let mut seen = HashSet::new();
    while let Some(nid) = stack.pop() {
        if !seen.insert(nid) || seen.len() > 400 {
            continue;
        }
        if let Ok(pos) = inode_pos(&img.sb, nid) {
            v.push((pos, 512));
        }
        if let Ok(info) = img.info(nid)
            && info.attr.kind == FileKind::Directory
            && let Layout::Plain { start: Some(s) } | Layout::Inline { start: s } = info.layout
        {
            v.push((s, 4096));
        }
        let _ = img.readdir(nid, 0, |e| {
            stack.push(e.nid);
            stack.len() < 400
        });
    }
    v.retain(|&(p, _)| p < len as u64);
    v
}

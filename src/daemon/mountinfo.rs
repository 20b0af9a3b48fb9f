//! The one reader of `/proc/self/mountinfo`: which mounts there are, where, and on which
//! device. Mount points are unescaped (`\040` and the like) and compared as text, the way
//! the kernel writes them: canonical absolute paths.

use std::path::Path;

use crate::store::Digest;

/// One line of mountinfo, the fields imagefs uses.
#[derive(Debug, PartialEq)]
pub(super) struct Mount {
    /// The device number, "major:minor" (the bdi's name in /sys/class/bdi).
    pub dev: String,
    /// Where it is mounted.
    pub point: String,
}

/// The mounts in a mountinfo text, in its order.
fn parse(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some(Mount {
                dev: f.get(2)?.to_string(),
                point: unescape(f.get(4)?),
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// This process's mounts.
pub(super) fn read() -> std::io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// Is something mounted on `path`? False when that cannot be told.
pub(super) fn is_mountpoint(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else {
        return false;
    };
    read().is_ok_and(|mounts| mounts.iter().any(|m| Path::new(&m.point) == canon))
}

/// The device of the mount on `mp` (canonical), without asking the filesystem there.
pub(super) fn device_of(mp: &Path) -> Option<String> {
    read()
        .ok()?
        .into_iter()
        .find(|m| Some(m.point.as_str()) == mp.to_str())
        .map(|m| m.dev)
}

/// The main mounts of imagefs in a mountinfo text, as (mount point, source: the store's path
/// as that mount named it). An image tree is a mount of one directory of its superblock (its
/// root is `/<hex>`), a main mount of the whole of it (`/`).
fn imagefs_mains(mountinfo: &str) -> Vec<(String, String)> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let mut r = right.split(' ');
            let (fstype, source) = (r.next()?, r.next()?);
            let point = f.get(4)?;
            (fstype == "fuse.imagefs" && *f.get(3)? == "/")
                .then(|| (unescape(point), unescape(source)))
        })
        .collect()
}

/// Where imagefs mounts of the store `root` are mounted (matched by the store's identity,
/// whatever path each mount was given).
pub(super) fn mounts_of_store(root: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let (Ok(id), Ok(text)) = (
        std::fs::metadata(root),
        std::fs::read_to_string("/proc/self/mountinfo"),
    ) else {
        return Vec::new();
    };
    imagefs_mains(&text)
        .into_iter()
        .filter(|(_, source)| {
            std::fs::metadata(source).is_ok_and(|m| (m.dev(), m.ino()) == (id.dev(), id.ino()))
        })
        .map(|(point, _)| point)
        .collect()
}

/// The mount id and device of the mount on `mp` (canonical; the topmost, if several are
/// stacked there), without asking the filesystem there.
pub(super) fn main_mount(mp: &Path) -> Option<super::busy::MainMount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (Path::new(&unescape(f.get(4)?)) == mp).then_some(())?;
        Some(super::busy::MainMount {
            id: f.first()?.parse().ok()?,
            dev: dev_number(f.get(2)?)?,
        })
    })
}

/// A device "major:minor" (decimal, as mountinfo writes it) as a `dev_t`.
fn dev_number(dev: &str) -> Option<u64> {
    let (major, minor) = dev.split_once(':')?;
    Some(nix::sys::stat::makedev(
        major.parse().ok()?,
        minor.parse().ok()?,
    ))
}

/// The mount points strictly below `mp`, deepest first.
pub(super) fn mounts_below(mounts: &[Mount], mp: &Path) -> Vec<String> {
    let prefix = format!("{}/", mp.display());
    let mut below: Vec<String> = mounts
        .iter()
        .filter(|m| m.point.starts_with(&prefix))
        .map(|m| m.point.clone())
        .collect();
    below.sort_by_key(|m| std::cmp::Reverse(m.matches('/').count()));
    below
}

/// The digests whose `rootfs` below mountpoint `mp` has a mount on it.
pub(super) fn rootfs_mounted(mounts: &[Mount], mp: &Path) -> std::collections::HashSet<Digest> {
    let digests = format!("{}/digests/", mp.display());
    mounts_below(mounts, mp)
        .into_iter()
        .filter_map(|m| {
            let hex = m.strip_prefix(&digests)?.strip_suffix("/rootfs")?;
            Digest::parse_hex(hex)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_below_takes_only_deeper_mounts_deepest_first() {
        let (a, c) = ("ab".repeat(32), "cd".repeat(32));
        let info = parse(&format!(
            "22 1 0:21 / /mnt/images rw - fuse.imagefs /store rw
23 22 0:22 /{a} /mnt/images/digests/{a}/rootfs ro - fuse.imagefs /store ro
24 1 0:23 / /mnt/images2 rw - tmpfs none rw
25 22 0:22 /{c} /mnt/images/digests/{c}/rootfs ro - fuse.imagefs /store ro
26 23 0:24 / /mnt/images/digests/{a}/rootfs/proc rw - proc proc rw
27 22 0:25 / /mnt/images/with\\040space rw - tmpfs none rw
28 22 0:26 / /mnt/images/digests/nothex/rootfs rw - tmpfs none rw
"
        ));
        assert_eq!(
            mounts_below(&info, Path::new("/mnt/images")),
            vec![
                format!("/mnt/images/digests/{a}/rootfs/proc"),
                format!("/mnt/images/digests/{a}/rootfs"),
                format!("/mnt/images/digests/{c}/rootfs"),
                "/mnt/images/digests/nothex/rootfs".to_string(),
                "/mnt/images/with space".to_string(),
            ]
        );
        assert!(mounts_below(&info, Path::new("/mnt/other")).is_empty());
        let trees = rootfs_mounted(&info, Path::new("/mnt/images"));
        let want: std::collections::HashSet<Digest> = [&a, &c]
            .iter()
            .filter_map(|h| Digest::parse_hex(h))
            .collect();
        assert_eq!((trees.len(), trees), (2, want));
    }

    #[test]
    fn imagefs_mains_skips_image_trees_and_other_types() {
        let a = "ab".repeat(32);
        let info = format!(
            "22 1 0:21 / /mnt/i\\040j rw - fuse.imagefs /st\\040ore rw
23 22 0:22 /{a} /mnt/i/digests/{a}/rootfs ro - fuse.imagefs /store ro
24 1 0:23 / /mnt/other rw - fuse.sshfs /store rw
"
        );
        assert_eq!(
            imagefs_mains(&info),
            vec![("/mnt/i j".to_string(), "/st ore".to_string())]
        );
    }

    #[test]
    fn dev_number_reads_major_and_minor() {
        let d = dev_number("0:61").expect("dev");
        assert_eq!(
            (nix::sys::stat::major(d), nix::sys::stat::minor(d)),
            (0, 61)
        );
        assert_eq!(dev_number("x:1"), None);
    }

    #[test]
    fn parse_keeps_device_and_unescaped_point_and_skips_short_lines() {
        let info = parse("36 35 98:0 / /mnt/a\\011b rw - ext4 /dev/x rw\nshort line\n");
        assert_eq!(
            info,
            vec![Mount {
                dev: "98:0".into(),
                point: "/mnt/a\tb".into()
            }]
        );
    }
}

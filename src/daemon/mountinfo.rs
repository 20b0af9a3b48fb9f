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

//! Who keeps a mount busy, found before `imagefs umount` changes anything: the image trees
//! must be detached before the main mount can go, so a umount that would be refused (EBUSY)
//! must be refused before they are.
//!
//! The kernel counts a mount busy while anything references it: a process's working or root
//! directory, an open file, a mapped file, a loop device backed by a file in it, or a mount
//! below it. The image trees are another superblock (another device), so a process inside
//! one holds its tree, not the main mount; what holds the main mount itself is whatever has
//! the main mount's device. Read from `/proc` (as `fuser -m` does), so best effort: what
//! starts using the mount between this check and the unmount still makes it fail.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{AtFlags, CWD, StatxFlags, statx};

/// What identifies the main mount: its mount id (what a working directory or an open file
/// references) and its device (what a mapping shows).
#[derive(Clone, Copy)]
pub(super) struct MainMount {
    pub id: u64,
    pub dev: u64,
}

/// How long the scan may take: a process stuck on another hung filesystem must not hang
/// `imagefs umount` (then nothing is known, and the unmount is tried as before).
const SCAN_LIMIT: Duration = Duration::from_secs(3);

/// The first process found using the mount `main` on `mp`, as "pid N (comm) has <what>
/// there", or a loop device backed by a file under `mp`; `None` when nothing is, or when
/// the scan did not finish within [`SCAN_LIMIT`].
pub(super) fn holder(mp: &Path, main: MainMount) -> Option<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path: PathBuf = mp.to_path_buf();
    std::thread::Builder::new()
        .name("imagefs-busy".into())
        .spawn(move || {
            let _ = tx.send(scan(&path, main));
        })
        .ok()?;
    match rx.recv_timeout(SCAN_LIMIT) {
        Ok(found) => found,
        Err(_) => {
            log::warn!(
                "{}: could not tell in time whether a process uses it",
                mp.display()
            );
            None
        }
    }
}

fn scan(mp: &Path, main: MainMount) -> Option<String> {
    let me = std::process::id();
    let procs = std::fs::read_dir("/proc").ok()?;
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Some(what) = uses(&entry.path(), main) {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some(format!("pid {pid} ({}) has {what} there", comm.trim()));
        }
    }
    loop_backed_by(mp)
}

/// The mount id of what `p` (a magic link of /proc) leads to, from the kernel's cached
/// attributes (`AT_STATX_DONT_SYNC`: no request to a FUSE daemon, which may be stuck).
fn mount_id(p: &Path) -> Option<u64> {
    let st = statx(CWD, p, AtFlags::STATX_DONT_SYNC, StatxFlags::MNT_ID).ok()?;
    (st.stx_mask & StatxFlags::MNT_ID.bits() != 0).then_some(st.stx_mnt_id)
}

/// What of the process at `/proc/<pid>` is on the main mount, if anything.
fn uses(proc: &Path, main: MainMount) -> Option<&'static str> {
    let on = |p: &Path| mount_id(p) == Some(main.id);
    if on(&proc.join("cwd")) {
        return Some("its working directory");
    }
    if on(&proc.join("root")) {
        return Some("its root directory");
    }
    if let Ok(fds) = std::fs::read_dir(proc.join("fd"))
        && fds.flatten().any(|fd| on(&fd.path()))
    {
        return Some("a file open");
    }
    // Mappings: "addr perms offset MAJ:MIN inode path", the device in hex.
    let (major, minor) = (
        nix::sys::stat::major(main.dev),
        nix::sys::stat::minor(main.dev),
    );
    let mapped = std::fs::read_to_string(proc.join("maps")).is_ok_and(|maps| {
        maps.lines().any(|l| {
            l.split_whitespace().nth(3).is_some_and(|d| {
                d.split_once(':').is_some_and(|(ma, mi)| {
                    u64::from_str_radix(ma, 16) == Ok(major)
                        && u64::from_str_radix(mi, 16) == Ok(minor)
                })
            })
        })
    });
    mapped.then_some("a file mapped")
}

/// A loop device whose backing file is under `mp` (a VMM's image attached through it).
fn loop_backed_by(mp: &Path) -> Option<String> {
    let prefix = format!("{}/", mp.display());
    std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .find_map(|b| {
            let file = std::fs::read_to_string(b.path().join("loop/backing_file")).ok()?;
            file.starts_with(&prefix).then(|| {
                format!(
                    "{} is backed by {} there",
                    b.file_name().to_string_lossy(),
                    file.trim_end()
                )
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_cwd_holds_its_mount_and_nothing_holds_a_mount_nobody_uses() {
        use std::os::unix::fs::MetadataExt;
        let me = Path::new("/proc/self");
        let id = mount_id(&me.join("cwd")).expect("mount id of the cwd");
        let dev = std::fs::metadata(".").expect("stat cwd").dev();
        assert_eq!(
            uses(me, MainMount { id, dev }),
            Some("its working directory")
        );
        let nobody = MainMount {
            id: u64::MAX,
            dev: u64::MAX,
        };
        assert_eq!(uses(me, nobody), None);
    }
}

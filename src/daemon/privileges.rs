//! What an image may do to the host through the mounts: by default, nothing beyond being
//! read. Image content is untrusted (whoever asks hypeman to pull decides it), so every
//! mount the daemon makes — the main mount, the image-tree superblock and each tree cloned
//! from it, and each image mounted with the kernel's erofs — is `nosuid` and `nodev`: the kernel then ignores setuid and setgid bits and file
//! capabilities (`security.capability`) on exec, and refuses to open device nodes.
//!
//! `--allow-setuid` (`-o allow_setuid`) lifts `nosuid` (never `nodev`: a runtime makes its
//! container's `/dev` itself), for runtimes whose containers use `sudo` or `ping`. It is
//! refused where it would hand root to every local user: with `--allow-other`, unless no
//! other user can reach the mountpoint (a root-owned directory above it that others cannot
//! search, as docker keeps `/var/lib/docker`), and for a mount made by a user other than
//! root (fusermount3 makes those `nosuid` whatever is asked).
//!
//! `-o suid` and `-o dev` are not the opt-in: mount.fuse3 appends both to every mount it
//! makes (and mount(8) drops a `suid` the user wrote), so they say nothing about the
//! operator's wish; they are accepted and change nothing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use fuser::MountOption;

use super::config::MountConfig;

/// Refuses `--allow-setuid` where it would expose the trees' setuid binaries to other
/// users, or contradict another option; `mp` is the canonical mountpoint.
pub(super) fn check(opts: &MountConfig, mp: &Path) -> Result<(), String> {
    if !opts.allow_setuid {
        return Ok(());
    }
    if opts.flags.contains(&MountOption::NoSuid) {
        return Err(
            "--allow-setuid (-o allow_setuid) and -o nosuid contradict each other; give one".into(),
        );
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(
            "--allow-setuid needs root: fusermount3 mounts every mount made by another user nosuid"
                .into(),
        );
    }
    if opts.allow_other {
        if let Some(guard) = private_ancestor(mp) {
            log::debug!(
                "--allow-setuid with --allow-other: {} keeps other users out of {}",
                guard.display(),
                mp.display()
            );
        } else {
            return Err(format!(
                "--allow-setuid with --allow-other would let every local user run the images' setuid-root binaries as root through {mp}; refused. \
                 Mount under a directory only root can enter (owned by root, mode 0700, or 0710 with group root, no ACL, every directory below it root's), \
                 e.g. `install -d -m 0700 /var/lib/imagefs` and mount on /var/lib/imagefs/mnt; or leave out --allow-other or --allow-setuid",
                mp = mp.display()
            ));
        }
    }
    Ok(())
}

/// The warning an opted-in mount logs once, in the daemon's log.
pub(super) fn warn_if_opted_in(opts: &MountConfig, mp: &Path) {
    if opts.allow_setuid {
        log::warn!(
            "--allow-setuid: {} and its image trees are mounted suid: setuid and setgid binaries and file capabilities in images take effect for every process that can reach them{}",
            mp.display(),
            if opts.allow_other {
                " (--allow-other: container processes, and whoever can enter the mountpoint's private parent)"
            } else {
                " (root only: without --allow-other no other user can use the mount)"
            }
        );
    }
}

/// The nearest directory above `mp` that keeps every user but root out (see
/// [`keeps_others_out`]), with only root-owned directories between it and `mp`; `None`
/// if there is none.
fn private_ancestor(mp: &Path) -> Option<PathBuf> {
    for dir in mp.ancestors().skip(1) {
        let m = std::fs::metadata(dir).ok()?;
        if m.uid() != 0 {
            // Its owner may enter it and everything below, whatever is above.
            return None;
        }
        if keeps_others_out(m.uid(), m.gid(), m.mode(), has_access_acl(dir)) {
            return Some(dir.to_path_buf());
        }
    }
    None
}

/// A directory only root can search: owned by root, no search bit for others, no search
/// bit for its group unless that group is root's, no access ACL (which may grant search).
fn keeps_others_out(uid: u32, gid: u32, mode: u32, acl: bool) -> bool {
    uid == 0 && mode & 0o001 == 0 && (mode & 0o010 == 0 || gid == 0) && !acl
}

/// Whether `dir` has a POSIX access ACL (an error other than "none" counts as one).
fn has_access_acl(dir: &Path) -> bool {
    match rustix::fs::getxattr(dir, "system.posix_acl_access", &mut [0u8; 0][..]) {
        Ok(_) => true,
        Err(e) => e != rustix::io::Errno::NODATA && e != rustix::io::Errno::OPNOTSUPP,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_root_directory_others_cannot_search_keeps_them_out() {
        assert!(keeps_others_out(0, 0, 0o700, false));
        assert!(
            keeps_others_out(0, 0, 0o710, false),
            "docker's 0710 root:root"
        );
        assert!(keeps_others_out(0, 5, 0o700, false));
        assert!(
            !keeps_others_out(0, 5, 0o710, false),
            "a group other than root's may search"
        );
        assert!(!keeps_others_out(0, 0, 0o701, false));
        assert!(!keeps_others_out(0, 0, 0o755, false));
        assert!(
            !keeps_others_out(1000, 1000, 0o700, false),
            "its owner may enter"
        );
        assert!(
            !keeps_others_out(0, 0, 0o700, true),
            "an ACL may grant search"
        );
    }

    fn config(allow_setuid: bool, allow_other: bool, flags: Vec<MountOption>) -> MountConfig {
        MountConfig {
            store: "/s".into(),
            mountpoint: "/m".into(),
            flags,
            foreground: false,
            allow_other,
            allow_setuid,
            threads: 1,
            durable: true,
            passthrough: true,
            rootfs_mounts: super::super::config::TreeMounts::Kernel,
            rootfs_mounts_max: 1,
            cache_size: 1 << 20,
            log_file: None,
        }
    }

    #[test]
    fn without_the_opt_in_nothing_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert!(check(&config(false, true, vec![]), tmp.path()).is_ok());
    }

    #[test]
    fn setuid_contradicting_nosuid_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let e = check(&config(true, false, vec![MountOption::NoSuid]), tmp.path());
        assert!(e.is_err_and(|e| e.contains("contradict")));
    }

    #[test]
    fn setuid_with_allow_other_under_a_searchable_directory_is_refused() {
        // /tmp is 1777: everyone may search it. (As root; other users are refused earlier.)
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir_in("/tmp").expect("tempdir");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let mp = tmp.path().join("mnt");
        std::fs::create_dir(&mp).expect("mnt");
        let e = check(&config(true, true, vec![]), &mp).expect_err("refused");
        assert!(
            e.contains("refused") || e.contains("needs root"),
            "unexpected message: {e}"
        );
    }

    #[test]
    fn setuid_with_allow_other_under_a_root_only_directory_is_accepted() {
        if !nix::unistd::geteuid().is_root() {
            return; // the ownership this needs is root's
        }
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir_in("/tmp").expect("tempdir");
        let private = tmp.path().join("private");
        std::fs::create_dir(&private).expect("private");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let mp = private.join("a").join("mnt");
        std::fs::create_dir_all(&mp).expect("mnt");
        assert_eq!(check(&config(true, true, vec![]), &mp), Ok(()));
        // A directory in between that another user owns: that user may enter the trees.
        std::os::unix::fs::chown(private.join("a"), Some(1000), None).expect("chown");
        assert!(check(&config(true, true, vec![]), &mp).is_err());
    }
}

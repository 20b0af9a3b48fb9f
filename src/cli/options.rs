//! The mount-helper conventions: `-o` option strings, and the argument order mount.fuse3
//! uses (`imagefs STORE MOUNTPOINT -o OPTIONS`, from `mount -t fuse.imagefs` or fstab).

use std::ffi::OsString;
use std::path::PathBuf;

use fuser::MountOption;

use crate::daemon::TreeMounts;

/// Subcommands, to tell them from a mount helper's first argument (a store path).
const SUBCOMMANDS: [&str; 8] = [
    "mount",
    "umount",
    "import",
    "ls",
    "fsck",
    "gc",
    "help",
    "completions",
];

/// Rewrites `imagefs STORE MNT [-o OPTS]` into `imagefs mount --store STORE MNT [-o OPTS]`.
pub fn helper_argv(args: Vec<OsString>) -> Vec<OsString> {
    let first = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
    if args.len() < 3 || first.starts_with('-') || SUBCOMMANDS.contains(&first) {
        return args;
    }
    let mut out: Vec<OsString> = vec![args[0].clone(), "mount".into(), "--store".into()];
    out.extend(args[1..].iter().cloned());
    out
}

/// One `-o` option.
#[derive(Debug, PartialEq)]
pub enum Opt {
    AllowOther,
    AllowSetuid,
    Threads(usize),
    LogFile(PathBuf),
    NoSync,
    NoPassthrough,
    NoRootfsMounts,
    RootfsMounts(TreeMounts),
    RootfsMountsMax(usize),
    CacheSize(usize),
    Foreground,
    Flag(MountOption),
    /// Said by mount(8)/fstab for their own use, or always true here.
    Ignored,
}

pub fn parse(opt: &str) -> Result<Opt, String> {
    let (key, value) = match opt.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (opt, None),
    };
    Ok(match (key, value) {
        ("allow_other", None) => Opt::AllowOther,
        ("allow_setuid", None) => Opt::AllowSetuid,
        ("threads", Some(v)) => match v.parse::<usize>() {
            Ok(n) if (1..=64).contains(&n) => Opt::Threads(n),
            _ => return Err(format!("-o threads={v}: expected 1 to 64")),
        },
        ("log_file", Some(v)) if !v.is_empty() => Opt::LogFile(PathBuf::from(v)),
        ("no_sync", None) => Opt::NoSync,
        ("no_passthrough", None) => Opt::NoPassthrough,
        ("no_rootfs_mounts", None) => Opt::NoRootfsMounts,
        ("rootfs_mounts", Some(v)) => match TreeMounts::parse(v) {
            Some(how) => Opt::RootfsMounts(how),
            None => return Err(format!("-o rootfs_mounts={v}: expected kernel, fuse or none")),
        },
        ("rootfs_mounts_max", Some(v)) => match v.parse::<usize>() {
            Ok(n) if n >= 1 => Opt::RootfsMountsMax(n),
            _ => return Err(format!("-o rootfs_mounts_max={v}: expected a number from 1 up")),
        },
        ("cache_size", Some(v)) => match parse_size(v) {
            Some(n) => Opt::CacheSize(n),
            None => return Err(format!("-o cache_size={v}: expected a size such as 64M, 1G or 65536")),
        },
        ("foreground", None) => Opt::Foreground,
        ("nodev", None) => Opt::Flag(MountOption::NoDev),
        ("nosuid", None) => Opt::Flag(MountOption::NoSuid),
        // mount.fuse3 appends `dev,suid` to every mount it makes (and mount(8) drops a `suid`
        // the user wrote): they cannot be the operator's opt-in. The mounts stay nodev and,
        // without allow_setuid, nosuid (daemon::privileges).
        ("dev" | "suid", None) => Opt::Ignored,
        ("exec", None) => Opt::Flag(MountOption::Exec),
        ("noexec", None) => Opt::Flag(MountOption::NoExec),
        ("atime", None) => Opt::Flag(MountOption::Atime),
        ("noatime", None) => Opt::Flag(MountOption::NoAtime),
        // Always on (the kernel checks permissions), or for mount(8) and systemd.
        ("default_permissions" | "defaults" | "rw" | "auto" | "noauto" | "user" | "users"
        | "nouser" | "nofail" | "_netdev" | "relatime" | "async", None) => Opt::Ignored,
        (k, _) if k.starts_with("x-") || k.starts_with("comment=") => Opt::Ignored,
        // tags/ is writable; a read-only mount is not offered.
        ("ro", None) => return Err("-o ro: imagefs mounts are read-write (tags/ takes ln -s, mv, rm); digests/ is always read-only".into()),
        _ => return Err(format!("-o {opt}: unknown mount option")),
    })
}

/// A byte count: digits, optionally followed by K, M or G (KiB, MiB, GiB; also written
/// KiB, MiB, GiB), as `--cache-size` and `-o cache_size=` take it.
pub fn parse_size(v: &str) -> Option<usize> {
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(digits);
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => return None,
    };
    num.parse::<usize>().ok()?.checked_mul(1usize << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn mount_helper_argv_becomes_a_mount_subcommand() {
        assert_eq!(
            helper_argv(os(&["imagefs", "/s", "/m", "-o", "allow_other"])),
            os(&[
                "imagefs",
                "mount",
                "--store",
                "/s",
                "/m",
                "-o",
                "allow_other"
            ])
        );
        let sub = os(&["imagefs", "ls", "--store", "/s"]);
        assert_eq!(helper_argv(sub.clone()), sub);
        let flag = os(&["imagefs", "--help", "x"]);
        assert_eq!(helper_argv(flag.clone()), flag);
    }

    #[test]
    fn options() {
        assert_eq!(parse("allow_other"), Ok(Opt::AllowOther));
        assert_eq!(parse("threads=8"), Ok(Opt::Threads(8)));
        assert!(parse("threads=0").is_err());
        assert_eq!(parse("no_rootfs_mounts"), Ok(Opt::NoRootfsMounts));
        assert_eq!(
            parse("rootfs_mounts=fuse"),
            Ok(Opt::RootfsMounts(TreeMounts::Fuse))
        );
        assert_eq!(
            parse("rootfs_mounts=kernel"),
            Ok(Opt::RootfsMounts(TreeMounts::Kernel))
        );
        assert!(parse("rootfs_mounts=loop").is_err());
        assert_eq!(parse("rootfs_mounts_max=3"), Ok(Opt::RootfsMountsMax(3)));
        assert!(parse("rootfs_mounts_max=0").is_err());
        assert_eq!(parse("cache_size=64M"), Ok(Opt::CacheSize(64 << 20)));
        assert_eq!(parse("cache_size=0"), Ok(Opt::CacheSize(0)));
        assert!(parse("cache_size=").is_err());
        assert!(parse("cache_size=12X").is_err());
        assert_eq!(parse("nosuid"), Ok(Opt::Flag(MountOption::NoSuid)));
        assert_eq!(parse("allow_setuid"), Ok(Opt::AllowSetuid));
        // What mount.fuse3 appends to every mount: never an opt-in.
        assert_eq!(parse("suid"), Ok(Opt::Ignored));
        assert_eq!(parse("dev"), Ok(Opt::Ignored));
        assert_eq!(parse("x-systemd.automount"), Ok(Opt::Ignored));
        assert_eq!(parse("nofail"), Ok(Opt::Ignored));
        assert!(parse("ro").is_err());
        assert!(parse("bogus").is_err());
        assert_eq!(
            parse("log_file=/var/log/i.log"),
            Ok(Opt::LogFile("/var/log/i.log".into()))
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Some(65536));
        assert_eq!(parse_size("512K"), Some(512 << 10));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("0"), Some(0));
        for bad in ["", "M", "-1", "1.5M", "64 M", "1T", "99999999999999999999G"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}

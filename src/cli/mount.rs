//! `imagefs mount` and `imagefs umount`: checks, daemonizing, the FUSE session, signals.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fuser::{Config, MountOption, Session, SessionACL};

use super::{options, rootfs_mounts};
use crate::fs::{ImageFs, Shared};
use crate::store::{Options, Store};

#[derive(clap::Args, Debug)]
pub struct MountArgs {
    /// The hypeman image store (its `content/`, `repositories/` and legacy directories).
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// Where to mount it (an existing, empty directory).
    mountpoint: PathBuf,
    /// Stay in the foreground instead of daemonizing.
    #[arg(long, short = 'f')]
    foreground: bool,
    /// Let other users use the mount (permissions are still checked by the kernel).
    #[arg(long)]
    allow_other: bool,
    /// Threads serving kernel requests.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// When daemonized, append the log here (otherwise it is discarded once the mount
    /// is ready; with --foreground the log goes to stderr).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Serve store files with pread instead of FUSE passthrough.
    #[arg(long)]
    no_passthrough: bool,
    /// Serve every `digests/<hex>/rootfs/` from the main mount instead of a read-only
    /// mount of its own on it (slower; `fusermount3 -u` then works without `-z`).
    #[arg(long)]
    no_rootfs_mounts: bool,
    /// At most this many image trees are mounted of their own; the other images'
    /// `rootfs/` is served by the main mount (each mounted tree is a mount-table line
    /// and an open image).
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    rootfs_mounts_max: u32,
    /// Do not fsync after installing a tag (faster, an acknowledged tag may be lost on
    /// power failure; crashes of the daemon are still safe).
    #[arg(long)]
    no_sync: bool,
    /// Mount options, comma-separated, as mount(8) and fstab give them: allow_other,
    /// threads=N, log_file=FILE, no_sync, no_passthrough, no_rootfs_mounts,
    /// rootfs_mounts_max=N, foreground,
    /// and the generic dev, nodev, suid, nosuid, exec, noexec, atime, noatime; defaults,
    /// rw, auto, noauto, user, nofail, _netdev and x-* are accepted and ignored (ro is
    /// refused: tags/ takes changes).
    #[arg(short = 'o', value_name = "OPTIONS", value_delimiter = ',')]
    options: Vec<String>,
}

/// Runs `imagefs mount`.
pub fn run(args: MountArgs) -> Result<(), String> {
    let opts = MountOpts::from_args(args)?;
    let (store, mountpoint) = (opts.store.clone(), opts.mountpoint.clone());
    mount(&store, &mountpoint, &opts)
}

fn is_mountpoint(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .map(unescape_mountinfo)
            .is_some_and(|m| Path::new(&m) == canon)
    })
}

pub(super) fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

/// Checks everything that can be checked before mounting, with messages a user can act on.
fn preflight(store: &Path, mountpoint: &Path) -> Result<PathBuf, String> {
    match std::fs::metadata(store) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("store {}: not a directory", store.display())),
        Err(e) => return Err(format!("store {}: {e}", store.display())),
    }
    let mp = match std::fs::metadata(mountpoint) {
        Ok(m) if m.is_dir() => mountpoint
            .canonicalize()
            .map_err(|e| format!("mountpoint {}: {e}", mountpoint.display()))?,
        Ok(_) => {
            return Err(format!(
                "mountpoint {}: not a directory",
                mountpoint.display()
            ));
        }
        Err(e) => return Err(format!("mountpoint {}: {e}", mountpoint.display())),
    };
    if is_mountpoint(&mp) {
        return Err(format!(
            "mountpoint {}: something is already mounted there (busy); unmount it first",
            mp.display()
        ));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing: load the fuse module (modprobe fuse) or give the container the device".into());
    }
    if !nix::unistd::geteuid().is_root() && !which("fusermount3") {
        return Err("fusermount3 not found on PATH: install fuse3 (apt-get install fuse3)".into());
    }
    Ok(mp)
}

struct MountOpts {
    store: PathBuf,
    mountpoint: PathBuf,
    /// Kernel mount flags from `-o` (dev, suid, exec, atime and their negations).
    flags: Vec<MountOption>,
    foreground: bool,
    allow_other: bool,
    threads: usize,
    durable: bool,
    passthrough: bool,
    rootfs_mounts: bool,
    rootfs_mounts_max: usize,
    log_file: Option<PathBuf>,
}

impl MountOpts {
    fn from_args(a: MountArgs) -> Result<MountOpts, String> {
        let mut o = MountOpts {
            store: a.store,
            mountpoint: a.mountpoint,
            flags: Vec::new(),
            foreground: a.foreground,
            allow_other: a.allow_other,
            threads: a.threads.into(),
            durable: !a.no_sync,
            passthrough: !a.no_passthrough,
            rootfs_mounts: !a.no_rootfs_mounts,
            rootfs_mounts_max: a.rootfs_mounts_max as usize,
            log_file: a.log_file,
        };
        for opt in a.options.iter().filter(|o| !o.is_empty()) {
            match options::parse(opt)? {
                options::Opt::AllowOther => o.allow_other = true,
                options::Opt::Threads(n) => o.threads = n,
                options::Opt::LogFile(p) => o.log_file = Some(p),
                options::Opt::NoSync => o.durable = false,
                options::Opt::NoPassthrough => o.passthrough = false,
                options::Opt::NoRootfsMounts => o.rootfs_mounts = false,
                options::Opt::RootfsMountsMax(n) => o.rootfs_mounts_max = n,
                options::Opt::Foreground => o.foreground = true,
                options::Opt::Flag(f) => o.flags.push(f),
                options::Opt::Ignored => {}
            }
        }
        Ok(o)
    }
}

fn mount(store: &Path, mountpoint: &Path, opts: &MountOpts) -> Result<(), String> {
    let mp = preflight(store, mountpoint)?;
    let log = match &opts.log_file {
        Some(p) => Some(
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("log file {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let store = Store::open(
        store,
        Options {
            durable: opts.durable,
        },
    )
    .map_err(|e| e.to_string())?;
    let store = Arc::new(store);
    // The scan's threads leave freed memory in their malloc arenas; give it back.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    {
        let ix = &*store;
        log::info!(
            "store {}: {} tags, {} digests",
            store.root().display(),
            ix.tag_count(),
            ix.digest_count()
        );
    }
    // Daemonize before any thread exists: the child serves, the parent waits for its word.
    let mut ready_pipe = if opts.foreground {
        None
    } else {
        let (r, w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
        // SAFETY: no other thread exists yet in this process.
        match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
            nix::unistd::ForkResult::Parent { .. } => {
                drop(w);
                let mut msg = String::new();
                let _ = std::fs::File::from(r).read_to_string(&mut msg);
                return if msg == "ok" {
                    Ok(())
                } else if msg.is_empty() {
                    Err("the daemon exited before the mount was ready".into())
                } else {
                    Err(msg)
                };
            }
            nix::unistd::ForkResult::Child => {
                drop(r);
                let _ = nix::unistd::setsid();
                if let Some(f) = &log {
                    // The daemon's whole log goes to the file; the parent reports errors.
                    // SAFETY: dup2 onto stderr, which this process owns.
                    unsafe { libc::dup2(f.as_raw_fd(), 2) };
                }
                Some(w)
            }
        }
    };
    let result = serve(store, &mp, opts, log, &mut ready_pipe);
    if let (Err(msg), Some(w)) = (&result, ready_pipe) {
        let _ = std::fs::File::from(w).write_all(msg.as_bytes());
    }
    result
}

fn serve(
    store: Arc<Store>,
    mp: &Path,
    opts: &MountOpts,
    log: Option<std::fs::File>,
    ready: &mut Option<OwnedFd>,
) -> Result<(), String> {
    // SIGINT/SIGTERM are taken by one thread, which unmounts; every other thread inherits
    // the blocked mask.
    let mut sigs = nix::sys::signal::SigSet::empty();
    sigs.add(nix::sys::signal::Signal::SIGINT);
    sigs.add(nix::sys::signal::Signal::SIGTERM);
    sigs.add(nix::sys::signal::Signal::SIGHUP);
    sigs.thread_block()
        .map_err(|e| format!("sigprocmask: {e}"))?;

    raise_open_files_limit();
    // Tells `imagefs fsck`/`gc` that a mount serves this store (its trash may hold images
    // still in use).
    let _mounted = crate::store::lockfile::hold_mounted(store.root())
        .map_err(|e| format!("{}: {e}", store.root().display()))?;
    let fs = Arc::new(ImageFs::new(store.clone(), mp, opts.passthrough));
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(store.root().display().to_string()),
        // A kernel option (fuser's Subtype is only passed to fusermount): the mount's type
        // reads fuse.imagefs, as `mount -t fuse.imagefs` and fstab expect.
        MountOption::CUSTOM("subtype=imagefs".into()),
        MountOption::DefaultPermissions,
    ];
    // Defaults: suid (a container rootfs needs its setuid binaries), nodev (device nodes
    // in images are shown, not opened); -o may say otherwise.
    let has = |a: &MountOption, b: &MountOption| opts.flags.contains(a) || opts.flags.contains(b);
    if !has(&MountOption::Suid, &MountOption::NoSuid) {
        config.mount_options.push(MountOption::Suid);
    }
    if !has(&MountOption::Dev, &MountOption::NoDev) {
        config.mount_options.push(MountOption::NoDev);
    }
    config.mount_options.extend(opts.flags.iter().cloned());
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads);
    config.clone_fd = true;
    let mut session = Session::new(Shared::main(fs.clone()), mp, &config)
        .map_err(|e| format!("mount {}: {e}", mp.display()))?;
    fs.start_notifier(session.notifier());
    raise_readahead(mp);
    fs.start_watcher()?;
    let images = if opts.rootfs_mounts {
        let flags = rootfs_mounts::Flags {
            nosuid: opts.flags.contains(&MountOption::NoSuid),
            nodev: !opts.flags.contains(&MountOption::Dev),
            noexec: opts.flags.contains(&MountOption::NoExec),
            allow_other: opts.allow_other,
            max_trees: opts.rootfs_mounts_max,
        };
        rootfs_mounts::ImageTrees::start(&fs, store.root(), mp, &flags, &config)
    } else {
        None
    };
    let mut unmounter = session.unmount_callable();
    let mp_owned = mp.to_path_buf();
    let stop_binding = images.as_ref().map(|t| (t.stop.clone(), fs.clone()));
    std::thread::Builder::new()
        .name("imagefs-signals".into())
        .spawn(move || {
            if let Ok(sig) = sigs.wait() {
                log::info!("{sig:?}: unmounting {}", mp_owned.display());
                if let Some((stop, fs)) = &stop_binding {
                    stop.store(true, Ordering::Relaxed);
                    fs.digests_changed.raise();
                    rootfs_mounts::detach_below(&mp_owned);
                }
                if let Err(e) = unmounter.unmount() {
                    log::warn!("unmount {}: {e}; detaching it lazily", mp_owned.display());
                    let _ = nix::mount::umount2(&mp_owned, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        })
        .map_err(|e| format!("thread: {e}"))?;
    log::info!("mounted {} on {}", store.root().display(), mp.display());
    if let Some(w) = ready.take() {
        let _ = std::fs::File::from(w).write_all(b"ok");
        detach_stdio(log);
    }
    let r = session.run().map_err(|e| format!("session: {e}"));
    log::info!("unmounted {}", mp.display());
    if let Some(t) = images {
        t.finish(&fs);
    }
    r
}

/// Each image in use holds its `rootfs.erofs` open, and each FUSE thread a /dev/fuse clone:
/// a store of thousands of images would hit the usual soft limit of 1024 descriptors, so
/// take the hard limit.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                log::debug!("open files limit stays {soft}: {e}");
            }
        }
        _ => {}
    }
}

/// The kernel offers FUSE at most 128 KiB of readahead at init; images are read
/// sequentially, and decoding costs per request, so ask the mount's bdi for 1 MiB (the
/// largest FUSE request). Best effort: without it reads are just smaller.
fn raise_readahead(mp: &Path) {
    // The device number from mountinfo: a stat of the mountpoint would ask this very
    // daemon, which does not serve requests yet.
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let Some(dev) = info.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4).map(|m| unescape_mountinfo(m)).as_deref() == mp.to_str())
            .then(|| f.get(2).map(|d| d.to_string()))
            .flatten()
    }) else {
        return;
    };
    set_readahead(&dev);
}

/// Sets the readahead of bdi `dev` ("major:minor") to 1 MiB.
pub(super) fn set_readahead(dev: &str) {
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    match std::fs::write(&path, "1024") {
        Ok(()) => log::debug!("{path}: readahead 1 MiB"),
        Err(e) => log::debug!("{path}: {e}; keeping the kernel's readahead"),
    }
}

/// Detaches the daemon from the terminal or pipe that started it: stdin and stdout go to
/// /dev/null, stderr (the log) to the log file if one was given, else to /dev/null.
fn detach_stdio(log: Option<std::fs::File>) {
    let Ok(null) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    let err = log.as_ref().map_or(null.as_raw_fd(), |f| f.as_raw_fd());
    // SAFETY: dup2 onto the standard descriptors, which this process owns.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
        libc::dup2(err, 2);
    }
}

pub fn umount(mountpoint: &Path) -> Result<(), String> {
    if !is_mountpoint(mountpoint) {
        return Err(format!("{}: not mounted", mountpoint.display()));
    }
    if nix::unistd::geteuid().is_root() {
        // The image trees mounted on digests/<hex>/rootfs go first (lazily: a container
        // inside keeps its tree, and the daemon serves it until the container leaves).
        // The daemon may mount one again meanwhile: try a few times.
        let mp = mountpoint
            .canonicalize()
            .unwrap_or_else(|_| mountpoint.to_path_buf());
        let mut tries = 0;
        let r = loop {
            rootfs_mounts::detach_below(&mp);
            match nix::mount::umount(&mp) {
                Err(nix::errno::Errno::EBUSY) if tries < 3 => tries += 1,
                r => break r,
            }
        };
        r.map_err(|e| match e {
            nix::errno::Errno::EBUSY => format!(
                "{}: busy (a process uses it); stop it, or `umount -l` to detach lazily",
                mountpoint.display()
            ),
            e => format!("{}: {e}", mountpoint.display()),
        })
    } else {
        let st = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg(mountpoint)
            .status()
            .map_err(|e| format!("fusermount3: {e}"))?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("fusermount3 -u {} failed", mountpoint.display()))
        }
    }
}

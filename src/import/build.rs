//! Building `rootfs.erofs` reproducibly, and naming images by their bytes.
//!
//! `SOURCE_DATE_EPOCH=E mkfs.erofs --quiet -zlz4 -U <nil uuid>`, E one second past the
//! tree's latest mtime ([`super::mtime`]): erofs-utils 1.5 then keeps every file's own mtime
//! (seconds and nanoseconds) and takes E, not the wall clock, as the build time, so the
//! image bytes depend only on the tree's names, contents, types, modes, owners, mtimes,
//! xattrs and hard links. (It stores no atime or ctime: reading the tree changes nothing.)
//! `-T` is not used: erofs-utils 1.5's `-T` sets every inode's mtime to the build time.

use std::path::Path;
use std::process::Command;

use super::{ImportError, Result};
use crate::store::Digest;

/// The filesystem UUID of every imported image.
pub const FIXED_UUID: &str = "00000000-0000-0000-0000-000000000000";

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

/// Is there a `setpriv` that knows `--pdeathsig` (util-linux 2.33 and later)?
fn setpriv_has_pdeathsig() -> bool {
    on_path("setpriv")
        && Command::new("setpriv")
            .arg("--help")
            .stdin(std::process::Stdio::null())
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--pdeathsig"))
}

/// Runs the command after `$1` only while the process `$1` is still its parent: the guard
/// between `setpriv --pdeathsig` (which arms the signal) and the program, for an import
/// killed before the signal was armed. (`$PPID` is read when the shell starts, after.)
const PARENT_GUARD: &str = r#"[ "$PPID" = "$1" ] || exit 125; shift; exec "$@""#;

/// `mkfs.erofs`, made to die with this process (the thread that runs it, which waits for
/// it): a killed import must not leave a build running on (orphaned, still writing into its
/// work directory). Without unsafe code there is no `prctl(PR_SET_PDEATHSIG)` between fork
/// and exec here, so util-linux's `setpriv --pdeathsig KILL` arms it, then a shell checks
/// the import is still its parent and becomes mkfs.erofs. Without setpriv, mkfs.erofs runs
/// as it is (and the work directory's inherited lock keeps it from being swept meanwhile).
fn mkfs_command() -> Command {
    if !setpriv_has_pdeathsig() {
        log::debug!("no setpriv --pdeathsig: mkfs.erofs would outlive a killed import");
        return Command::new("mkfs.erofs");
    }
    let mut c = Command::new("setpriv");
    c.args(["--pdeathsig", "KILL", "--", "sh", "-c", PARENT_GUARD, "sh"])
        .arg(std::process::id().to_string())
        .arg("mkfs.erofs");
    c
}

/// Longest file name mkfs.erofs 1.5 stores: a legal 255-byte name fails it with "Could not
/// format the device: [Error 2] No such file or directory".
pub const MAX_NAME: usize = 254;
/// Deepest directory nesting let through to mkfs.erofs: it recurses per level and crashes
/// (SIGSEGV, no message) at about 1,950 levels with an 8 MiB stack; real images nest a few
/// dozen deep.
pub const MAX_DEPTH: usize = 1000;
/// Longest path mkfs.erofs can open (PATH_MAX, with its NUL).
const MAX_PATH: usize = libc::PATH_MAX as usize - 1;

/// Checks `tree` against what mkfs.erofs can build, so that its failure is named here
/// (which entry, which limit) rather than as mkfs.erofs's own unclear error or crash.
/// Returns the latest mtime (seconds) of the tree's entries, its root included.
pub fn check_limits(tree: &Path) -> Result<i64> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    // The root as named and as followed (a directory source may be named by a symlink).
    let mut latest = i64::MIN;
    for m in [std::fs::symlink_metadata(tree), std::fs::metadata(tree)] {
        latest = latest.max(m.map_err(|e| ImportError::io(tree.display(), e))?.mtime());
    }
    let mut todo: Vec<(std::path::PathBuf, usize)> = vec![(tree.to_path_buf(), 0)];
    while let Some((dir, depth)) = todo.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| ImportError::io(dir.display(), e))?;
        for e in entries {
            let e = e.map_err(|e| ImportError::io(dir.display(), e))?;
            let name = e.file_name();
            let path = e.path();
            let shown = || {
                path.strip_prefix(tree)
                    .unwrap_or(&path)
                    .display()
                    .to_string()
            };
            if name.as_bytes().len() > MAX_NAME {
                return Err(ImportError::Build(format!(
                    "cannot store {:?}: its name is {} bytes, and mkfs.erofs stores names of \
                     at most {MAX_NAME}",
                    shown(),
                    name.as_bytes().len()
                )));
            }
            if path.as_os_str().len() > MAX_PATH {
                return Err(ImportError::Build(format!(
                    "cannot store {:?}: its path in the build tree is {} bytes, longer than \
                     mkfs.erofs can open ({MAX_PATH})",
                    shown(),
                    path.as_os_str().len()
                )));
            }
            // DirEntry::metadata is lstat's: a symlink's own time.
            let meta = e
                .metadata()
                .map_err(|e| ImportError::io(path.display(), e))?;
            latest = latest.max(meta.mtime());
            if meta.is_dir() {
                if depth + 1 > MAX_DEPTH {
                    return Err(ImportError::Build(format!(
                        "cannot store {:?}: directories nest more than {MAX_DEPTH} deep, \
                         deeper than mkfs.erofs can build",
                        shown()
                    )));
                }
                todo.push((path, depth + 1));
            }
        }
    }
    Ok(latest)
}

/// How mkfs.erofs ended, for a message: its exit status or the signal that killed it.
fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => {
            let name = nix::sys::signal::Signal::try_from(s).map_or("?", |s| s.as_str());
            format!("killed by signal {s} ({name}): it crashed or was killed")
        }
        _ => status.to_string(),
    }
}

/// Builds `image` from the directory `tree`.
pub fn mkfs(tree: &Path, image: &Path) -> Result<()> {
    if !on_path("mkfs.erofs") {
        return Err(ImportError::Build(
            "not found on PATH: install erofs-utils".into(),
        ));
    }
    let epoch = super::mtime::source_date_epoch(check_limits(tree)?);
    let out = mkfs_command()
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .args(["--quiet", "-zlz4", "-U", FIXED_UUID])
        .arg(image)
        .arg(tree)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| ImportError::Build(format!("cannot run: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .rev()
            .take(5)
            .collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let said = if tail.is_empty() {
            "it printed no error".to_string()
        } else {
            format!("it said: {}", tail.join(" / "))
        };
        return Err(ImportError::Build(format!(
            "building {} from {} failed ({}); {said}",
            image.display(),
            tree.display(),
            describe_status(out.status),
        )));
    }
    Ok(())
}

/// The sha256 and size of a file.
pub fn hash_file(path: &Path) -> Result<(Digest, u64)> {
    std::fs::File::open(path)
        .and_then(crate::store::fsutil::sha256_of)
        .map_err(|e| ImportError::io(path.display(), e))
}

/// Copies an existing erofs image after checking that the reader can open it.
pub fn copy_image(src: &Path, dest: &Path) -> Result<()> {
    let f = std::fs::File::open(src).map_err(|e| ImportError::io(src.display(), e))?;
    imagefs_erofs::Image::open(f).map_err(|e| ImportError::source(src.display(), e.to_string()))?;
    std::fs::copy(src, dest).map_err(|e| {
        ImportError::io(
            format!("copying {} to {}", src.display(), dest.display()),
            e,
        )
    })?;
    Ok(())
}

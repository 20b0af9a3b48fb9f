//! Building `rootfs.erofs` reproducibly, and naming images by their bytes.
//!
//! `mkfs.erofs --quiet -zlz4 -T0 -U <nil uuid>`: with erofs-utils 1.5, `-T` fixes the
//! superblock's build time *and* every inode's mtime, so the image bytes depend only on
//! the tree's names, contents, types, modes, owners, xattrs and hard links. (Without `-T`
//! the build time makes every image differ.) File mtimes therefore read as 0 in the image.

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

/// Builds `image` from the directory `tree`.
pub fn mkfs(tree: &Path, image: &Path) -> Result<()> {
    if !on_path("mkfs.erofs") {
        return Err(ImportError::Build(
            "not found on PATH: install erofs-utils".into(),
        ));
    }
    let out = mkfs_command()
        .args(["--quiet", "-zlz4", "-T0", "-U", FIXED_UUID])
        .arg(image)
        .arg(tree)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| ImportError::Build(format!("cannot run: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(ImportError::Build(format!(
            "building {} from {} failed ({}): {}",
            image.display(),
            tree.display(),
            out.status,
            tail.join(" / ")
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

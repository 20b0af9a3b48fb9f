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

/// Builds `image` from the directory `tree`.
pub fn mkfs(tree: &Path, image: &Path) -> Result<()> {
    let out = Command::new("mkfs.erofs")
        .args(["--quiet", "-zlz4", "-T0", "-U", FIXED_UUID])
        .arg(image)
        .arg(tree)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ImportError::Build("not found on PATH: install erofs-utils".into())
            } else {
                ImportError::Build(format!("cannot run: {e}"))
            }
        })?;
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

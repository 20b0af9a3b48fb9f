//! Small filesystem primitives with the durability and atomicity the store relies on.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of temporary names; never a valid tag (tags start with `[A-Za-z0-9_]`).
pub const TMP_PREFIX: &str = ".imagefs-tmp-";

/// How `rename` treats an existing destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameMode {
    Replace,
    NoReplace,
    Exchange,
}

/// `renameat2(2)` with the given mode.
pub fn rename(from: &Path, to: &Path, mode: RenameMode) -> io::Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags};
    let flags = match mode {
        RenameMode::Replace => RenameFlags::empty(),
        RenameMode::NoReplace => RenameFlags::RENAME_NOREPLACE,
        RenameMode::Exchange => RenameFlags::RENAME_EXCHANGE,
    };
    nix::fcntl::renameat2(AT_FDCWD, from, AT_FDCWD, to, flags).map_err(io::Error::from)
}

/// Flushes a directory's entries to disk. `O_DIRECTORY`: whatever else stands at `dir` is
/// refused, never opened (a FIFO would block).
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)?
        .sync_all()
}

/// A name unique in this process and, through the pid and clock, across processes.
pub fn unique_name(tag: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{t:x}-{}-{n}-{tag}", std::process::id())
}

/// Installs a symlink `link -> target` atomically: written under a temporary name in the same
/// directory, then renamed into place. With `NoReplace` an existing `link` fails with EEXIST
/// and nothing changes. With `durable` the directory is fsynced before returning.
pub fn install_symlink(
    target: &str,
    link: &Path,
    mode: RenameMode,
    durable: bool,
) -> io::Result<()> {
    let dir = link.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!("{TMP_PREFIX}{}", unique_name("link")));
    std::os::unix::fs::symlink(target, &tmp)?;
    if let Err(e) = rename(&tmp, link, mode) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if durable {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// Writes a file atomically (temporary file, fsync, rename, fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!("{TMP_PREFIX}{}", unique_name("file")));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The sha256 and length of everything `r` yields (an image file, say).
pub fn sha256_of(mut r: impl std::io::Read) -> io::Result<(super::names::Digest, u64)> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(buf.get(..n).unwrap_or_default());
        size += n as u64;
    }
    Ok((super::names::Digest::from_bytes(h.finalize().into()), size))
}

/// Disk space used by a tree, in bytes (allocated blocks; symlinks not followed).
pub fn tree_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = m.blocks() * 512;
    if !m.is_dir() {
        return own;
    }
    let children: u64 = std::fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| tree_bytes(&e.path())).sum())
        .unwrap_or(0);
    own + children
}

/// Removes a directory tree; a missing tree is not an error.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_symlink_noreplace_refuses_existing_and_leaves_no_temp() {
        let d = tempfile::tempdir().expect("tempdir");
        let link = d.path().join("t");
        install_symlink("a", &link, RenameMode::NoReplace, true).expect("first");
        let e = install_symlink("b", &link, RenameMode::NoReplace, true).expect_err("second");
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        assert_eq!(std::fs::read_link(&link).expect("readlink"), Path::new("a"));
        install_symlink("c", &link, RenameMode::Replace, false).expect("replace");
        assert_eq!(std::fs::read_link(&link).expect("readlink"), Path::new("c"));
        let names: Vec<_> = std::fs::read_dir(d.path())
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["t"]);
    }

    #[test]
    fn exchange_swaps_two_links() {
        let d = tempfile::tempdir().expect("tempdir");
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::os::unix::fs::symlink("x", &a).expect("a");
        std::os::unix::fs::symlink("y", &b).expect("b");
        rename(&a, &b, RenameMode::Exchange).expect("exchange");
        assert_eq!(std::fs::read_link(&a).expect("a"), Path::new("y"));
        assert_eq!(std::fs::read_link(&b).expect("b"), Path::new("x"));
    }
}

//! Tests of the filesystem's core without a kernel: [`Mount`] builds an [`ImageFs`] over a
//! store in a temporary directory (the store's own fixture, `store::tests::fixture`), with
//! no FUSE session: its invalidations go to a record ([`Invalidator::recording`]) and other
//! writers' changes are applied when the test polls the store ([`ImageFs::poll_store`], the
//! watcher thread's work). `kernel` stands in for the kernel's caches; `model` is a
//! reference model of the mount, driven by proptest.

mod kernel;
mod listing;
mod model;
mod read_path;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use super::ImageFs;
use super::notify::{Invalidator, Recorder};
use crate::store::Store;
use crate::store::tests::fixture::Fx;

/// Where the test mount would be: never mounted, only named by absolute `ln -s` targets.
pub(super) const MOUNTPOINT: &str = "/nonexistent/imagefs-test-mount";

/// A real erofs image (LZ4, as hypeman builds them) whose `etc/os-release` reads
/// [`os_release`]`(n)`; built once per `n`. `None` without `mkfs.erofs` (the skip policy of
/// `imagefs_erofs::testing`).
pub(super) fn image(n: u8) -> Option<Vec<u8>> {
    static CACHE: OnceLock<Mutex<HashMap<u8, Vec<u8>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(b) = cache.lock().expect("cache").get(&n) {
        return Some(b.clone());
    }
    let d = tempfile::tempdir().expect("tempdir");
    let tree = d.path().join("tree");
    fs::create_dir_all(tree.join("etc")).expect("mkdir");
    fs::write(tree.join("etc/os-release"), os_release(n)).expect("write");
    let img = d.path().join("img");
    let st = Command::new("mkfs.erofs")
        .args(["--quiet", "-zlz4", "-T0"])
        .arg(&img)
        .arg(&tree)
        .status()
        .ok()?;
    assert!(st.success(), "mkfs.erofs failed");
    let b = fs::read(&img).expect("read image");
    cache.lock().expect("cache").insert(n, b.clone());
    Some(b)
}

pub(super) fn os_release(n: u8) -> String {
    format!("ID=model{n}\n")
}

/// Makes `dir` a ready digest directory of digest `n` with a real image.
pub(super) fn real_digest_dir(fx: &Fx, dir: &Path, n: u8, image: &[u8]) {
    fs::create_dir_all(dir).expect("mkdir digest");
    fs::write(dir.join(super::rootfs::ROOTFS_IMAGE), image).expect("image");
    fx.metadata(dir, &crate::store::tests::fixture::hex(n), "ready", 42);
}

/// A filesystem core over the store of `fx`, without a kernel.
pub(super) struct Mount {
    pub fs: ImageFs,
    pub store: Arc<Store>,
    pub sent: Recorder,
}

impl Mount {
    /// Opens the store of `fx` as a mount does, following other writers (with no quiet
    /// window: nothing is deferred, see `store::deferred`).
    pub fn new(fx: &Fx) -> Mount {
        let store = Arc::new(fx.open());
        store.watch().expect("watch");
        store.set_quiet(std::time::Duration::ZERO);
        let (inval, sent) = Invalidator::recording();
        let fs = ImageFs::with_invalidator(store.clone(), Path::new(MOUNTPOINT), false, inval);
        Mount { fs, store, sent }
    }
}

/// A store holding image 1 under the tag `h.io/a:t`, mounted without a kernel; `None` where
/// no image can be built (see `image`). The fixture keeps the store's directory alive.
fn tagged_image_mount() -> Option<(Fx, Mount)> {
    let img = image(1)?;
    let fx = Fx::new();
    let hex = crate::store::tests::fixture::hex(1);
    real_digest_dir(&fx, &fx.p(&format!("content/{hex}")), 1, &img);
    fx.ctag("h.io/a", "t", 1);
    let m = Mount::new(&fx);
    Some((fx, m))
}

#[test]
fn removing_the_last_tag_collects_and_invalidates_the_digest_entry_without_a_kernel() {
    use std::ffi::OsStr;

    use super::inodes::{DIGESTS, TAGS};
    use super::notify::{Inval, Sent};
    use crate::store::tests::fixture::hex;

    let Some((fx, m)) = tagged_image_mount() else {
        return;
    };
    let lookup = |parent, name: &str| m.fs.lookup(parent, OsStr::new(name)).map(|(a, _)| a.ino.0);
    let repo = lookup(lookup(TAGS, "h.io").expect("h.io"), "a").expect("a");
    let tag = lookup(repo, "t").expect("tag");
    assert_eq!(
        m.fs.readlink(tag).expect("readlink"),
        format!("../../../digests/{}", hex(1)).into_bytes()
    );
    m.fs.unlink(repo, OsStr::new("t")).expect("rm");
    assert!(!fx.has(&format!("content/{}", hex(1))), "collected");
    let sent = m.sent.take();
    assert!(
        sent.contains(&Sent {
            inval: Inval::Entry(DIGESTS, hex(1).into()),
            waited: true
        }),
        "{sent:?}"
    );
}

/// With image trees mounted of their own, `rm` of a last tag waits only for `digests/<hex>`
/// to expire (the next lookup asks the daemon, which answers ENOENT), not for its drop:
/// dropping it, or its `rootfs`, detaches the tree, an RCU grace period in the kernel.
/// Those go on the lane nobody waits for, `rootfs` first, then the entry itself, which the
/// kernel must let go of for the image to be released. (Before, both were awaited.)
#[test]
fn with_image_trees_rm_of_a_last_tag_waits_for_no_detach() {
    use std::ffi::OsStr;
    use std::sync::atomic::Ordering;

    use super::inodes::{DIGESTS, TAGS};
    use super::notify::{Inval, Sent};
    use crate::store::tests::fixture::hex;

    let Some((_fx, m)) = tagged_image_mount() else {
        return;
    };
    m.fs.tree_conn_on.store(true, Ordering::Relaxed);
    let lookup = |parent, name: &str| m.fs.lookup(parent, OsStr::new(name)).map(|(a, _)| a.ino.0);
    let repo = lookup(lookup(TAGS, "h.io").expect("h.io"), "a").expect("a");
    let digest = lookup(DIGESTS, &hex(1)).expect("digest");
    lookup(digest, super::rootfs::ROOTFS).expect("rootfs");
    m.sent.take();
    m.fs.unlink(repo, OsStr::new("t")).expect("rm");
    let sent = m.sent.take();
    let waited: Vec<&Inval> = sent.iter().filter(|s| s.waited).map(|s| &s.inval).collect();
    assert!(
        waited.contains(&&Inval::Expire(DIGESTS, hex(1).into())),
        "{sent:?}"
    );
    assert!(
        !waited.iter().any(|i| matches!(i, Inval::Entry(..))),
        "an awaited invalidation drops an entry, detaching the tree: {sent:?}"
    );
    let queued: Vec<&Inval> = sent
        .iter()
        .filter(|s| !s.waited)
        .map(|s| &s.inval)
        .collect();
    let rootfs = Inval::Entry(digest, super::rootfs::ROOTFS.into());
    let entry = Inval::Entry(DIGESTS, hex(1).into());
    let at = |i: &Inval| queued.iter().position(|q| *q == i);
    assert!(
        matches!((at(&rootfs), at(&entry)), (Some(a), Some(b)) if a < b),
        "the rootfs dentry, then the digest's, are dropped unawaited: {sent:?}"
    );
    assert!(
        sent.contains(&Sent {
            inval: Inval::Inode(DIGESTS),
            waited: true
        }),
        "the listing of digests/ is dropped before rm returns: {sent:?}"
    );
}

/// Another writer retargets a tag the kernel has already looked up (a listing came first):
/// the inode the kernel holds keeps reading, now the new text. (It used to be detached at
/// once, and a readlink before the kernel took the invalidation answered EINVAL: seen in
/// `test_bug8_a_repository_moved_by_another_writer_reads_at_its_new_depth`.)
#[test]
fn a_tag_another_writer_retargets_reads_through_the_inode_the_kernel_holds() {
    use std::ffi::OsStr;

    use super::inodes::TAGS;
    use crate::store::tests::fixture::hex;

    let (Some(one), Some(two)) = (image(1), image(2)) else {
        return;
    };
    let fx = Fx::new();
    real_digest_dir(&fx, &fx.p(&format!("content/{}", hex(1))), 1, &one);
    real_digest_dir(&fx, &fx.p(&format!("content/{}", hex(2))), 2, &two);
    fx.ctag("h.io/a", "t", 1);
    let m = Mount::new(&fx);
    let lookup = |parent, name: &str| m.fs.lookup(parent, OsStr::new(name)).map(|(a, _)| a.ino.0);
    let repo = lookup(lookup(TAGS, "h.io").expect("h.io"), "a").expect("a");
    let tag = lookup(repo, "t").expect("tag");
    // hypeman's retag: the new link staged, then renamed over the old one.
    fx.ctag("h.io/a", ".t.new", 2);
    fs::rename(
        fx.p("repositories/h.io/a/.t.new"),
        fx.p("repositories/h.io/a/t"),
    )
    .expect("retag");
    m.fs.poll_store();
    assert_eq!(
        m.fs.readlink(tag)
            .expect("readlink of the inode the kernel holds"),
        format!("../../../digests/{}", hex(2)).into_bytes()
    );
}

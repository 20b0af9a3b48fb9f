//! The command line: `imagefs mount`, `umount`, `import`, and the store tools `ls`, `fsck`,
//! `gc`: argument parsing and `-o` options only; each command runs elsewhere (`daemon`,
//! `import`, `admin`).

#![forbid(unsafe_code)]

mod mount;
mod options;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "imagefs",
    version,
    about = "A hypeman image store as a FUSE mount: tags are symlinks (ln -s, mv, rm), \
             removing an image's last tag deletes it from disk at once."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Mount a store. Returns once the mount answers (unless --foreground).
    ///
    /// Also runs as a mount helper: `mount -t fuse.imagefs STORE MNT -o OPTS` and
    /// /etc/fstab lines (`STORE MNT fuse.imagefs allow_other,nofail 0 0`) call
    /// `imagefs STORE MNT -o OPTS`.
    Mount(mount::MountArgs),
    /// Unmount a mount made by `imagefs mount`; the daemon then exits.
    Umount { mountpoint: PathBuf },
    /// Import an image into the store and tag it: a directory, a tar archive (plain or
    /// gzip), an erofs image, an OCI image layout directory or a `docker save` tarball.
    ///
    /// The image is built with `mkfs.erofs -zlz4` reproducibly (fixed timestamp and UUID)
    /// into content/<hex>/rootfs.erofs with hypeman's metadata.json, and tagged
    /// repositories/<REPO>/<TAG>, under the store lock; a mount of the store shows it. OCI
    /// images (layers applied in order, with whiteouts and opaque directories) are named by
    /// their manifest digest and take entrypoint, cmd, env and working_dir from their config;
    /// everything else is named by the sha256 of its erofs image. Importing the same input
    /// again stores nothing new and (re)installs the tag. Prints "REPO:TAG sha256:<hex>".
    /// Exit status: 0 imported, 1 failed (the message names the path and the reason).
    Import(crate::import::ImportArgs),
    /// List tags and digests: one row per tag, then one per digest directory no tag names.
    ///
    /// Columns: TAG (REPO:TAG; `<none>` for an untagged digest), DIGEST (12 hex), SIZE (bytes
    /// of the files in the digest directory, powers of 1000), REFS (tags naming the digest
    /// directory), STATUS (metadata.json's). Safe while the store is mounted: it reads the
    /// store under the store lock.
    ///
    /// Exit status: 0 listed, 2 could not read the store.
    Ls(crate::admin::LsArgs),
    /// Check a store: interrupted changes, leftovers, dangling and malformed tags, stray
    /// files, metadata, and every ready image read in full.
    ///
    /// Reports one line per finding (`problem:` or `info:`, the path, the reason), then a
    /// summary. Untagged digests are reported as information (digest-only pulls are
    /// legitimate). The sha256 of rootfs.erofs must equal the digest directory's name unless
    /// the directory has a manifest.json (OCI imports are named by the manifest digest).
    /// Safe while the store is mounted: the check runs under the store lock, the images are
    /// read after it is released, and the trash is left to the live mount.
    ///
    /// Exit status: 0 clean (or fully repaired), 1 problems remain, 2 could not run.
    Fsck(crate::admin::FsckArgs),
    /// Remove ready and failed digest directories that no tag names.
    ///
    /// These are digest-only pulls and what other writers left when they removed tags.
    /// Digests being pulled (pending, pulling, converting) or with an unreadable status are
    /// never removed. Each removal takes the mount's crash-safe steps under the store lock
    /// (GC intent, rename into the trash beside the store, delete), so it is safe while the store is
    /// mounted. Prints what was removed and the bytes reclaimed.
    ///
    /// Exit status: 0 done, 1 some removal failed, 2 could not run.
    Gc(crate::admin::GcArgs),
}

pub fn main() -> i32 {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,fuser::session=error"),
    )
    .format_timestamp_millis()
    .init();
    let cli = Cli::parse_from(options::helper_argv(std::env::args_os().collect()));
    let result = match cli.cmd {
        Cmd::Mount(args) => mount::run(args),
        Cmd::Umount { mountpoint } => mount::umount(&mountpoint),
        Cmd::Import(args) => return crate::import::run(args),
        Cmd::Ls(args) => return crate::admin::ls::run(args),
        Cmd::Fsck(args) => return crate::admin::fsck::run(args),
        Cmd::Gc(args) => return crate::admin::gc::run(args),
    };
    match result {
        Ok(()) => 0,
        Err(msg) => {
            eprintln!("imagefs: {msg}");
            1
        }
    }
}

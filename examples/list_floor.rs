//! The least a FUSE server can do for `bench_tags.py`'s listing of every tag: a reference
//! for "listing every tag through the mount within 2x of the raw store" (issue 13).
//!
//!     list_floor MNT REPOS TAGS_PER_REPO [THREADS]
//!
//! Serves `MNT/tags/bench.local/repoNNNN/tNNN` (the names `bench_tags.py` gives; every tag
//! a symlink) with no store, no index and no allocation per entry: LOOKUP, GETATTR,
//! READDIR and READLINK are answered from arithmetic on the inode number. OPENDIR is
//! answered ENOSYS and READDIRPLUS is not offered, so a listing costs the fewest round
//! trips FUSE allows: a LOOKUP of the directory, a READDIR with its entries and the empty
//! READDIR that ends it. What a listing through it costs is FUSE's and the kernel's share,
//! which no server can take off. `scripts/bench_list_tags.py --floor` runs it beside
//! imagefs. Stops at unmount (`umount MNT`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, MountOption,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};

const TTL: Duration = Duration::from_secs(3600);
const ROOT: u64 = 1;
const TAGS: u64 = 2;
const HOST: u64 = 3;
/// Repository `r` is `REPO0 + r`; tag `t` of it `TAG0 + r * tags + t`.
const REPO0: u64 = 16;
const TAG0: u64 = 1 << 32;

struct Floor {
    repos: u64,
    tags: u64,
    repo_width: usize,
    tag_width: usize,
}

enum Node {
    Root,
    Tags,
    Host,
    Repo(u64),
    Tag(u64, u64),
}

impl Floor {
    fn node(&self, ino: u64) -> Option<Node> {
        match ino {
            ROOT => Some(Node::Root),
            TAGS => Some(Node::Tags),
            HOST => Some(Node::Host),
            i if (REPO0..REPO0 + self.repos).contains(&i) => Some(Node::Repo(i - REPO0)),
            i if (TAG0..TAG0 + self.repos * self.tags).contains(&i) => {
                let n = i - TAG0;
                Some(Node::Tag(n / self.tags, n % self.tags))
            }
            _ => None,
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let kind = match self.node(ino)? {
            Node::Tag(..) => FileType::Symlink,
            _ => FileType::Directory,
        };
        let at = SystemTime::UNIX_EPOCH;
        Some(FileAttr {
            ino: INodeNo(ino),
            size: if kind == FileType::Symlink { 76 } else { 4096 },
            blocks: 0,
            atime: at,
            mtime: at,
            ctime: at,
            crtime: at,
            kind,
            perm: if kind == FileType::Symlink {
                0o777
            } else {
                0o755
            },
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// How many entries directory `dir` has; `None` if it is no directory.
    fn len(&self, dir: &Node) -> Option<u64> {
        match dir {
            Node::Root | Node::Tags => Some(1),
            Node::Host => Some(self.repos),
            Node::Repo(_) => Some(self.tags),
            Node::Tag(..) => None,
        }
    }

    /// Entry `c` of directory `dir` (if it has that many): its number, type and name.
    fn entry(&self, dir: &Node, c: u64) -> Option<(u64, FileType, String)> {
        if c >= self.len(dir)? {
            return None;
        }
        let dir_kind = FileType::Directory;
        Some(match dir {
            Node::Root => (TAGS, dir_kind, "tags".into()),
            Node::Tags => (HOST, dir_kind, "bench.local".into()),
            Node::Host => (
                REPO0 + c,
                dir_kind,
                format!("repo{c:0w$}", w = self.repo_width),
            ),
            Node::Repo(r) => (
                TAG0 + r * self.tags + c,
                FileType::Symlink,
                format!("t{c:0w$}", w = self.tag_width),
            ),
            Node::Tag(..) => return None,
        })
    }

    /// The number in `name` after `prefix`, if it is written with `width` digits.
    fn number(name: &[u8], prefix: &[u8], width: usize) -> Option<u64> {
        let digits = name.strip_prefix(prefix)?;
        if digits.len() != width || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    }

    /// The number of `name` in directory `parent`, by the names [`entry`](Self::entry) gives.
    fn child(&self, parent: u64, name: &[u8]) -> Option<u64> {
        let dir = self.node(parent)?;
        let c = match dir {
            Node::Root | Node::Tags => 0,
            Node::Host => Self::number(name, b"repo", self.repo_width)?,
            Node::Repo(_) => Self::number(name, b"t", self.tag_width)?,
            Node::Tag(..) => return None,
        };
        self.entry(&dir, c)
            .filter(|(_, _, n)| n.as_bytes() == name)
            .map(|(ino, _, _)| ino)
    }
}

impl Filesystem for Floor {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self
            .child(parent.0, name.as_bytes())
            .and_then(|i| self.attr(i))
        {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino.0) {
            Some(Node::Tag(r, t)) => {
                let target = format!("../../../content/{:064x}", r * self.tags + t);
                reply.data(target.as_bytes())
            }
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(dir) = self.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let Some(len) = self.len(&dir) else {
            return reply.error(Errno::ENOTDIR);
        };
        // Entry k (from 0: `.`, `..`, then the children) resumes at offset k + 1.
        for k in offset..len + 2 {
            let (child, kind, name) = match k {
                0 => (ino.0, FileType::Directory, ".".to_string()),
                1 => (ino.0, FileType::Directory, "..".to_string()),
                _ => match self.entry(&dir, k - 2) {
                    Some(e) => e,
                    None => break,
                },
            };
            if reply.add(INodeNo(child), k + 1, kind, OsStr::new(&name)) {
                break;
            }
        }
        reply.ok();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: list_floor MNT REPOS TAGS_PER_REPO [THREADS]");
        std::process::exit(2)
    };
    let (Some(mnt), Some(repos), Some(tags)) = (
        args.get(1),
        args.get(2).and_then(|s| s.parse::<u64>().ok()),
        args.get(3).and_then(|s| s.parse::<u64>().ok()),
    ) else {
        usage()
    };
    let threads = match args.get(4) {
        Some(s) => s.parse().unwrap_or_else(|_| usage()),
        None => 4,
    };
    if repos == 0 || tags == 0 {
        usage()
    }
    let fs = Floor {
        repos,
        tags,
        // As bench_tags.py's Layout names them.
        repo_width: (repos - 1).to_string().len().max(4),
        tag_width: (tags - 1).to_string().len().max(3),
    };
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("list_floor".into()),
        MountOption::RO,
        MountOption::DefaultPermissions,
    ];
    config.n_threads = Some(threads);
    config.clone_fd = true;
    if let Err(e) = fuser::mount(fs, mnt, &config) {
        eprintln!("list_floor: mount {mnt}: {e}");
        std::process::exit(1);
    }
}

//! STATFS: the mount reports the store's filesystem (DESIGN.md section 2).

use super::ImageFs;
use super::errno::{Error, Result};

/// What STATFS reports.
pub(super) struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

impl ImageFs {
    pub(super) fn statfs(&self) -> Result<StatFs> {
        let s = nix::sys::statvfs::statvfs(self.store.root())
            .map_err(|e| Error::io("statfs", &std::io::Error::from(e)))?;
        Ok(StatFs {
            blocks: s.blocks(),
            bfree: s.blocks_free(),
            bavail: s.blocks_available(),
            files: s.files(),
            ffree: s.files_free(),
            bsize: u32::try_from(s.block_size()).unwrap_or(4096),
            namelen: u32::try_from(s.name_max()).unwrap_or(255),
            frsize: u32::try_from(s.fragment_size()).unwrap_or(4096),
        })
    }
}

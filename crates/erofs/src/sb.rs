//! The erofs superblock (at byte 1024) and the feature set we accept.
//!
//! Invariant: a `SuperBlock` that parsed successfully has a block size in
//! 512..=65536, no unsupported incompatible feature, and no extra devices;
//! every other field is still untrusted and checked where used.

use super::bytes::{byte, le16, le32, le64};
use super::error::{ImageError, corrupt};

pub(crate) const SB_OFFSET: u64 = 1024;
pub(crate) const SB_SIZE: usize = 128;
const MAGIC: u32 = 0xE0F5_E1E2;

/// Compat feature: the superblock block carries a crc32c.
pub(crate) const COMPAT_SB_CHKSUM: u32 = 0x01;

pub(crate) const FEAT_ZERO_PADDING: u32 = 0x01;
pub(crate) const FEAT_COMPR_CFGS: u32 = 0x02; // also BIG_PCLUSTER
const FEAT_CHUNKED_FILE: u32 = 0x04;
const FEAT_DEVICE_TABLE: u32 = 0x08; // also COMPR_HEAD2
const FEAT_ZTAILPACKING: u32 = 0x10;
const FEAT_FRAGMENTS_DEDUPE: u32 = 0x20;
pub(crate) const FEAT_XATTR_PREFIXES: u32 = 0x40;
const SUPPORTED: u32 = FEAT_ZERO_PADDING
    | FEAT_COMPR_CFGS
    | FEAT_CHUNKED_FILE
    | FEAT_DEVICE_TABLE
    | FEAT_ZTAILPACKING
    | FEAT_XATTR_PREFIXES;

/// Parsed superblock fields the reader uses.
#[derive(Debug, Clone)]
pub(crate) struct SuperBlock {
    pub blkbits: u32,
    pub root_nid: u64,
    pub epoch: i64,
    pub fixed_nsec: u32,
    pub meta_blkaddr: u32,
    pub xattr_blkaddr: u32,
    pub feature_incompat: u32,
    /// Bit i set: compression algorithm i may appear.
    pub compr_algs: u16,
    pub xattr_prefix_count: u8,
    pub xattr_prefix_start: u32,
    pub packed_nid: u64,
}

impl SuperBlock {
    pub(crate) fn parse(b: &[u8]) -> Result<SuperBlock, ImageError> {
        if le32(b, 0, "superblock magic")? != MAGIC {
            return corrupt("bad superblock magic (not an erofs image)");
        }
        let blkbits = u32::from(byte(b, 12, "blkszbits")?);
        if !(9..=16).contains(&blkbits) {
            return corrupt(format!("unsupported block size bits {blkbits}"));
        }
        let feature_incompat = le32(b, 80, "feature_incompat")?;
        let unsupported = feature_incompat & !SUPPORTED;
        if unsupported != 0 {
            let what = if unsupported & FEAT_FRAGMENTS_DEDUPE != 0 {
                " (fragments/dedupe)"
            } else {
                ""
            };
            return Err(ImageError::Unsupported(format!(
                "incompatible features {unsupported:#x}{what}"
            )));
        }
        let extra_devices = le16(b, 86, "extra_devices")?;
        if feature_incompat & FEAT_DEVICE_TABLE != 0 && extra_devices != 0 {
            return Err(ImageError::Unsupported(format!(
                "{extra_devices} extra devices"
            )));
        }
        if byte(b, 90, "dirblkbits")? != 0 {
            return Err(ImageError::Unsupported("dirblkbits != 0".into()));
        }
        let compr_algs = if feature_incompat & FEAT_COMPR_CFGS != 0 {
            le16(b, 84, "available_compr_algs")?
        } else {
            1 // LZ4 only
        };
        Ok(SuperBlock {
            blkbits,
            root_nid: u64::from(le16(b, 14, "root_nid")?),
            epoch: le64(b, 24, "epoch")? as i64,
            fixed_nsec: le32(b, 32, "fixed_nsec")?,
            meta_blkaddr: le32(b, 40, "meta_blkaddr")?,
            xattr_blkaddr: le32(b, 44, "xattr_blkaddr")?,
            feature_incompat,
            compr_algs,
            xattr_prefix_count: byte(b, 91, "xattr_prefix_count")?,
            xattr_prefix_start: le32(b, 92, "xattr_prefix_start")?,
            packed_nid: le64(b, 96, "packed_nid")?,
        })
    }

    /// Whether the superblock asks for a checksum check (`feature_compat`).
    pub(crate) fn wants_checksum(b: &[u8]) -> Result<bool, ImageError> {
        Ok(le32(b, 8, "feature_compat")? & COMPAT_SB_CHKSUM != 0)
    }

    /// Bytes from offset 1024 the kernel's checksum covers.
    pub(crate) fn checksum_len(&self) -> u64 {
        let bs = self.block_size();
        if bs > SB_OFFSET { bs - SB_OFFSET } else { bs }
    }

    /// Verify the crc32c of `data` (the `checksum_len` bytes at offset 1024,
    /// checksum field taken as zero), as the kernel does at mount.
    pub(crate) fn verify_checksum(data: &[u8]) -> Result<(), ImageError> {
        let expected = le32(data, 4, "superblock checksum")?;
        let mut crc = !0u32;
        for (i, &b) in data.iter().enumerate() {
            let b = if (4..8).contains(&i) { 0 } else { b };
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
            }
        }
        if crc != expected {
            return corrupt(format!("superblock checksum {crc:#x} != {expected:#x}"));
        }
        Ok(())
    }

    pub(crate) fn block_size(&self) -> u64 {
        1u64 << self.blkbits
    }

    pub(crate) fn has(&self, feature: u32) -> bool {
        self.feature_incompat & feature != 0
    }
}

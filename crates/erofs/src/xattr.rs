//! Extended attributes: inline entries after the inode, shared entries in
//! the xattr area, short name-index prefixes and long (table) prefixes.
//!
//! Layout after the inode: a 12-byte header (`name_filter: u32,
//! shared_count: u8, reserved[7]`), `shared_count` 4-byte shared ids, then
//! inline entries (`name_len: u8, name_index: u8, value_size: u16, name,
//! value`, each padded to 4 bytes) filling the rest of the `xattr_icount`
//! area. Entries whose prefix index the kernel doesn't list (lustre,
//! unknown) are skipped, as the kernel's `listxattr` does. Output order is
//! the kernel's: inline entries, then shared ones.

use super::Image;
use super::bytes::{byte, le16, le32, slice, to_usize};
use super::error::{ImageError, corrupt};
use super::inode::{InodeInfo, Nid};
use super::sb::FEAT_XATTR_PREFIXES;

/// Full name prefix of a short name index (None: not listed by the kernel).
fn short_prefix(index: u8) -> Option<&'static [u8]> {
    Some(match index {
        1 => b"user.",
        2 => b"system.posix_acl_access",
        3 => b"system.posix_acl_default",
        4 => b"trusted.",
        6 => b"security.",
        _ => return None,
    })
}

/// Extended attributes as (full name, value) pairs, e.g. `(b"user.foo", b"bar")`.
pub type Xattrs = Vec<Xattr>;
/// One (full name, value) pair.
pub type Xattr = (Vec<u8>, Vec<u8>);

impl Image {
    pub(crate) fn xattrs_impl(&self, nid: Nid) -> Result<Xattrs, ImageError> {
        let info = self.info(nid)?;
        self.xattrs_of(&info)
    }

    fn xattrs_of(&self, info: &InodeInfo) -> Result<Xattrs, ImageError> {
        let mut out = Vec::new();
        let isz = to_usize(info.xattr_isize(), "xattr area")?;
        if isz == 0 {
            return Ok(out);
        }
        let body = self
            .src
            .read_vec(info.pos.saturating_add(info.isize), isz)?;
        let shared = usize::from(byte(&body, 4, "xattr shared count")?);
        let inline_start = 12 + shared * 4;
        if inline_start > isz {
            return corrupt("xattr shared count exceeds xattr area");
        }
        let mut p = inline_start;
        while p < isz {
            let (entry, len) = self.entry(&body, p)?;
            if let Some(e) = entry {
                out.push(e);
            }
            p += len;
        }
        let base = u64::from(self.sb.xattr_blkaddr) << self.sb.blkbits;
        for i in 0..shared {
            let id = le32(&body, 12 + 4 * i, "shared xattr id")?;
            let pos = base
                .checked_add(u64::from(id) * 4)
                .ok_or_else(|| ImageError::Corrupt("shared xattr position overflows".into()))?;
            let mut h = [0u8; 4];
            self.src.read_cached(&mut h, pos)?;
            let len = 4 + usize::from(h[0]) + usize::from(le16(&h, 2, "xattr value size")?);
            let buf = self.src.read_vec(pos, len)?;
            if let (Some(e), _) = self.entry(&buf, 0)? {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Parse the entry at `buf[p..]`: (name, value) if listed, and its padded length.
    #[allow(clippy::type_complexity)]
    fn entry(
        &self,
        buf: &[u8],
        p: usize,
    ) -> Result<(Option<(Vec<u8>, Vec<u8>)>, usize), ImageError> {
        let name_len = usize::from(byte(buf, p, "xattr name len")?);
        let index = byte(buf, p + 1, "xattr name index")?;
        let value_len = usize::from(le16(buf, p + 2, "xattr value size")?);
        let name = slice(buf, p + 4, name_len, "xattr name")?;
        let value = slice(buf, p + 4 + name_len, value_len, "xattr value")?;
        let total = (4 + name_len + value_len).div_ceil(4) * 4;
        let prefix: Option<Vec<u8>> = if index & 0x80 != 0 {
            self.long_prefix(index & 0x7f)?
        } else {
            short_prefix(index).map(<[u8]>::to_vec)
        };
        let entry = prefix.map(|mut full| {
            full.extend_from_slice(name);
            (full, value.to_vec())
        });
        Ok((entry, total))
    }

    /// Full prefix string of long-prefix table entry `i` (None if its base isn't listed).
    fn long_prefix(&self, i: u8) -> Result<Option<Vec<u8>>, ImageError> {
        let table = self
            .prefixes
            .get_or_init(|| self.load_prefixes().map_err(|e| e.to_string()));
        let table = table
            .as_ref()
            .map_err(|e| ImageError::Corrupt(format!("xattr prefix table: {e}")))?;
        let Some((base, infix)) = table.get(usize::from(i)) else {
            return corrupt(format!("xattr long prefix {i} out of range"));
        };
        Ok(short_prefix(*base).map(|p| [p, infix.as_slice()].concat()))
    }

    /// Load the long xattr name prefix table: `xattr_prefix_count` records of
    /// `len: u16, base_index: u8, infix[len-1]`, 4-byte aligned, from the
    /// packed inode if there is one, else from the image.
    fn load_prefixes(&self) -> Result<Vec<(u8, Vec<u8>)>, ImageError> {
        if !self.sb.has(FEAT_XATTR_PREFIXES) {
            return Ok(Vec::new());
        }
        let packed = if self.sb.packed_nid != 0 {
            Some(self.info(Nid(self.sb.packed_nid))?)
        } else {
            None
        };
        let read = |pos: u64, len: usize| -> Result<Vec<u8>, ImageError> {
            match &packed {
                Some(info) => {
                    let mut v = vec![0u8; len];
                    if self.read_data(info, pos, &mut v)? != len {
                        return corrupt("xattr prefix past packed inode end");
                    }
                    Ok(v)
                }
                None => self.src.read_vec(pos, len),
            }
        };
        let mut pos = u64::from(self.sb.xattr_prefix_start) * 4;
        let mut out = Vec::new();
        for _ in 0..self.sb.xattr_prefix_count {
            let len = usize::from(le16(&read(pos, 2)?, 0, "xattr prefix len")?);
            let rec = read(pos + 2, len)?;
            let base = byte(&rec, 0, "xattr prefix base")?;
            out.push((base, rec.get(1..).unwrap_or_default().to_vec()));
            pos += (2 + len as u64).div_ceil(4) * 4;
        }
        Ok(out)
    }
}

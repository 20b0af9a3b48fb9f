//! Bounds-checked little-endian field access and checked arithmetic helpers.
//!
//! Invariant: nothing here panics; an out-of-range access is a
//! [`ImageError::Corrupt`] naming the field.

use super::error::ImageError;

/// Sub-slice `buf[off..off+len]`, or a `Corrupt` error naming `what`.
pub(crate) fn slice<'a>(
    buf: &'a [u8],
    off: usize,
    len: usize,
    what: &str,
) -> Result<&'a [u8], ImageError> {
    off.checked_add(len)
        .and_then(|end| buf.get(off..end))
        .ok_or_else(|| ImageError::Corrupt(format!("{what}: out of bounds")))
}

fn array<const N: usize>(buf: &[u8], off: usize, what: &str) -> Result<[u8; N], ImageError> {
    let s = slice(buf, off, N, what)?;
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    Ok(a)
}

pub(crate) fn le16(buf: &[u8], off: usize, what: &str) -> Result<u16, ImageError> {
    Ok(u16::from_le_bytes(array(buf, off, what)?))
}

pub(crate) fn le32(buf: &[u8], off: usize, what: &str) -> Result<u32, ImageError> {
    Ok(u32::from_le_bytes(array(buf, off, what)?))
}

pub(crate) fn le64(buf: &[u8], off: usize, what: &str) -> Result<u64, ImageError> {
    Ok(u64::from_le_bytes(array(buf, off, what)?))
}

pub(crate) fn byte(buf: &[u8], off: usize, what: &str) -> Result<u8, ImageError> {
    buf.get(off)
        .copied()
        .ok_or_else(|| ImageError::Corrupt(format!("{what}: out of bounds")))
}

/// Checked `a + b` on image-derived values.
pub(crate) fn add(a: u64, b: u64, what: &str) -> Result<u64, ImageError> {
    a.checked_add(b)
        .ok_or_else(|| ImageError::Corrupt(format!("{what}: overflow")))
}

/// Image-derived `u64` to `usize`.
pub(crate) fn to_usize(v: u64, what: &str) -> Result<usize, ImageError> {
    usize::try_from(v).map_err(|_| ImageError::Corrupt(format!("{what}: too large")))
}

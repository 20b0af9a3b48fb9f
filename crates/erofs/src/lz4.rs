//! A safe LZ4 block decoder with partial-output support.
//!
//! `decompress(src, dst)` decodes the LZ4 block `src` into `dst` and stops as
//! soon as `dst` is full (the kernel's `LZ4_decompress_safe_partial`), so a
//! pcluster is never decoded past the bytes its extent needs and trailing
//! padding after the stream is ignored. It returns the number of bytes
//! written. Malformed input (offset 0 or before the output start, truncated
//! sequence) is an error; no input can make it panic or write out of `dst`.

use super::error::{ImageError, corrupt};

/// Width of the fixed-size fast-path copies.
const WILD: usize = 16;

/// Copy 16 bytes `src[ip..]` to `dst[op..]` (caller checked both fit).
fn copy16(dst: &mut [u8], op: usize, src: &[u8], ip: usize) -> Result<(), ImageError> {
    let (Some(d), Some(s)) = (dst.get_mut(op..op + WILD), src.get(ip..ip + WILD)) else {
        return corrupt("lz4: fast copy out of range");
    };
    d.copy_from_slice(s);
    Ok(())
}

/// Decode `src` into `dst`, stopping when `dst` is full; returns bytes written.
pub(crate) fn decompress(src: &[u8], dst: &mut [u8]) -> Result<usize, ImageError> {
    let mut ip = 0usize;
    let mut op = 0usize;
    let out_len = dst.len();
    loop {
        if op >= out_len {
            return Ok(op);
        }
        let Some(&token) = src.get(ip) else {
            return corrupt("lz4: truncated input (token)");
        };
        ip += 1;
        // Literals.
        let mut lit = usize::from(token >> 4);
        if lit == 15 {
            lit = read_len(src, &mut ip, lit)?;
        }
        let lit_end = match ip.checked_add(lit) {
            Some(e) if e <= src.len() => e,
            _ => return corrupt("lz4: literal run past input end"),
        };
        if lit <= WILD && op + WILD <= out_len && ip + WILD <= src.len() {
            // Fast path: one fixed-size copy; bytes past `lit` are rewritten later.
            copy16(dst, op, src, ip)?;
            op += lit;
        } else {
            let n = lit.min(out_len - op);
            let (Some(d), Some(s)) = (dst.get_mut(op..op + n), src.get(ip..ip + n)) else {
                return corrupt("lz4: literal copy out of range");
            };
            d.copy_from_slice(s);
            op += n;
        }
        ip = lit_end;
        if op >= out_len || ip == src.len() {
            // Output full, or the last sequence (literals only) is done.
            return Ok(op);
        }
        // Match.
        let (Some(&lo), Some(&hi)) = (src.get(ip), src.get(ip + 1)) else {
            return corrupt("lz4: truncated match offset");
        };
        ip += 2;
        let offset = usize::from(u16::from_le_bytes([lo, hi]));
        if offset == 0 || offset > op {
            return corrupt("lz4: bad match offset");
        }
        let mut mlen = usize::from(token & 15);
        if mlen == 15 {
            mlen = read_len(src, &mut ip, mlen)?;
        }
        let mlen = mlen.saturating_add(4).min(out_len - op);
        copy_match(dst, op, offset, mlen)?;
        op += mlen;
    }
}

/// Continue an extended length (`base` is 15) with 255-continued bytes.
fn read_len(src: &[u8], ip: &mut usize, base: usize) -> Result<usize, ImageError> {
    let mut len = base;
    loop {
        let Some(&b) = src.get(*ip) else {
            return corrupt("lz4: truncated length");
        };
        *ip += 1;
        len = len.saturating_add(usize::from(b));
        if b != 255 {
            return Ok(len);
        }
    }
}

/// Copy `len` bytes from `op - offset` to `op` with LZ4 overlap semantics.
/// Caller guarantees `0 < offset <= op` and `op + len <= dst.len()`.
fn copy_match(dst: &mut [u8], op: usize, offset: usize, len: usize) -> Result<(), ImageError> {
    let Some(start) = op.checked_sub(offset) else {
        return corrupt("lz4: match before output start");
    };
    if op.checked_add(len).is_none_or(|e| e > dst.len()) {
        return corrupt("lz4: match past output end");
    }
    if offset >= WILD && op + len.next_multiple_of(WILD) <= dst.len() {
        // Fast path: non-overlapping 16-byte chunks, overshooting into
        // output that later sequences rewrite.
        let mut done = 0;
        while done < len {
            dst.copy_within(start + done..start + done + WILD, op + done);
            done += WILD;
        }
        return Ok(());
    }
    if offset >= len {
        dst.copy_within(start..start + len, op);
        return Ok(());
    }
    if offset == 1 {
        let b = dst.get(start).copied().unwrap_or(0);
        if let Some(d) = dst.get_mut(op..op + len) {
            d.fill(b);
        }
        return Ok(());
    }
    // Overlapping: the source grows as we copy, doubling each step.
    let mut done = 0usize;
    while done < len {
        let chunk = (op + done - start).min(len - done);
        dst.copy_within(start..start + chunk, op + done);
        done += chunk;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn compressible() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec((0u8..4, 1usize..40), 0..200).prop_map(|runs| {
            let mut v = Vec::new();
            for (b, n) in runs {
                for i in 0..n {
                    v.push(b.wrapping_add((i % 3) as u8));
                }
            }
            v
        })
    }

    /// Data built from slices of a random dictionary: long-offset matches.
    fn dictionary() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::collection::vec(any::<u8>(), 20..400),
            prop::collection::vec((any::<u16>(), 1usize..80), 0..300),
        )
            .prop_map(|(dict, picks)| {
                let mut v = Vec::new();
                for (at, n) in picks {
                    let s = usize::from(at) % dict.len();
                    v.extend(dict.iter().cycle().skip(s).take(n));
                }
                v
            })
    }

    proptest! {
        #[test]
        fn long_matches_roundtrip(data in dictionary(), cut in 0usize..30000) {
            let c = lz4_flex::block::compress(&data);
            let mut out = vec![0u8; data.len()];
            prop_assert_eq!(decompress(&c, &mut out).unwrap(), data.len());
            prop_assert_eq!(&out, &data);
            let n = cut.min(data.len());
            let mut part = vec![0u8; n];
            prop_assert_eq!(decompress(&c, &mut part).unwrap(), n);
            prop_assert_eq!(&part[..], &data[..n]);
        }

        #[test]
        fn matches_lz4_flex(data in compressible()) {
            let c = lz4_flex::block::compress(&data);
            let mut out = vec![0u8; data.len()];
            prop_assert_eq!(decompress(&c, &mut out).unwrap(), data.len());
            prop_assert_eq!(&out, &data);
        }

        #[test]
        fn partial_is_prefix(data in compressible(), cut in 0usize..8000) {
            let c = lz4_flex::block::compress(&data);
            let n = cut.min(data.len());
            let mut out = vec![0u8; n];
            prop_assert_eq!(decompress(&c, &mut out).unwrap(), n);
            prop_assert_eq!(&out[..], &data[..n]);
        }

        #[test]
        fn garbage_never_panics(src in prop::collection::vec(any::<u8>(), 0..300), n in 0usize..5000) {
            let mut out = vec![0u8; n];
            let _ = decompress(&src, &mut out);
        }
    }
}

//! A safe LZ4 block decoder with partial-output support.
//!
//! `decompress(src, dst)` decodes the LZ4 block `src` into `dst` and stops as
//! soon as `dst` is full (the kernel's `LZ4_decompress_safe_partial`), so a
//! pcluster is never decoded past the bytes its extent needs and trailing
//! padding after the stream is ignored. It returns the number of bytes
//! written; bytes of `dst` past that count may have been overwritten with
//! anything (fixed-size copies overshoot where `dst` has room). Malformed input
//! (offset 0 or before the output start, truncated sequence) is an error; no
//! input can make it panic or write out of `dst`.
//!
//! Speed (issue 13: decoding was half the daemon's CPU reading a large file) comes
//! from copying in fixed-size 16- and 8-byte moves, which compile to single vector
//! loads and stores, where `dst` has room for the overshoot: literals up to 16 bytes
//! in one move, matches in 16-byte steps when their offset is at least 16 (each step's
//! source is then already written), in 8-byte steps from 8, and short offsets
//! (repeating patterns) by writing the first 8 bytes one by one and then 8-byte steps
//! from a multiple of the offset at least 8 back. Only the last bytes of `dst` take the
//! exact, slower copies.

use super::error::ImageError;

/// Width of the widest fixed-size copy.
const WILD: usize = 16;

/// An error for malformed input (out of line: the loop's checks stay small).
#[cold]
#[inline(never)]
fn bad<T>(what: &'static str) -> Result<T, ImageError> {
    Err(ImageError::Corrupt(format!("lz4: {what}")))
}

/// Copies `N` bytes of `src` at `from` to `dst` at `to` as one fixed-size move.
#[inline(always)]
fn copy_n<const N: usize>(
    dst: &mut [u8],
    to: usize,
    src: &[u8],
    from: usize,
) -> Result<(), ImageError> {
    let s = src.get(from..).and_then(<[u8]>::first_chunk::<N>);
    let d = dst.get_mut(to..).and_then(<[u8]>::first_chunk_mut::<N>);
    match (s, d) {
        (Some(s), Some(d)) => {
            *d = *s;
            Ok(())
        }
        _ => bad("fast copy out of range"),
    }
}

/// Copies `N` bytes of `dst` at `from` to `dst` at `to` (the source read whole first).
#[inline(always)]
fn move_n<const N: usize>(dst: &mut [u8], from: usize, to: usize) -> Result<(), ImageError> {
    let Some(&s) = dst.get(from..).and_then(<[u8]>::first_chunk::<N>) else {
        return bad("match copy out of range");
    };
    let Some(d) = dst.get_mut(to..).and_then(<[u8]>::first_chunk_mut::<N>) else {
        return bad("match copy out of range");
    };
    *d = s;
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
            return bad("truncated input (token)");
        };
        if token < 0xf0 && token & 15 != 15 && ip + FAST_IN <= src.len() && op + FAST_OUT <= out_len
        {
            (ip, op) = short_sequence(src, dst, ip, op, token)?;
            continue;
        }
        ip += 1;
        // Literals.
        let mut lit = usize::from(token >> 4);
        if lit == 15 {
            lit = read_len(src, &mut ip, lit)?;
        }
        // `ip <= src.len()` and `op < out_len` hold here.
        let in_left = src.len() - ip;
        if lit > in_left {
            return bad("literal run past input end");
        }
        let room = out_len - op;
        if lit <= WILD && in_left >= WILD && room >= WILD {
            // One fixed-size copy; bytes past `lit` are rewritten later.
            copy_n::<WILD>(dst, op, src, ip)?;
        } else if lit <= 8 * WILD
            && in_left >= lit.next_multiple_of(WILD)
            && room >= lit.next_multiple_of(WILD)
        {
            // Mid-length runs: 16-byte moves (a `memcpy` call costs more at these sizes).
            let mut done = 0;
            while done < lit {
                copy_n::<WILD>(dst, op + done, src, ip + done)?;
                done += WILD;
            }
        } else {
            let n = lit.min(room);
            let (Some(d), Some(s)) = (dst.get_mut(op..op + n), src.get(ip..ip + n)) else {
                return bad("literal copy out of range");
            };
            d.copy_from_slice(s);
            if n < lit {
                return Ok(op + n);
            }
        }
        op += lit;
        ip += lit;
        if op >= out_len || ip == src.len() {
            // Output full, or the last sequence (literals only) is done.
            return Ok(op);
        }
        // Match.
        let (Some(&lo), Some(&hi)) = (src.get(ip), src.get(ip + 1)) else {
            return bad("truncated match offset");
        };
        ip += 2;
        let offset = usize::from(u16::from_le_bytes([lo, hi]));
        if offset == 0 || offset > op {
            return bad("bad match offset");
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

/// Input a short sequence may read from its token: the token, a 16-byte literal
/// copy, and (past at most 15 literals) a 2-byte offset.
const FAST_IN: usize = 18;
/// Output a short sequence may write: at most 15 literals (16 copied), then at most
/// 18 match bytes, written as up to 32.
const FAST_OUT: usize = 15 + 2 * WILD;

/// Decodes the sequence whose `token` is at `ip`, both of its lengths short (literals
/// under 15, match under 19), where the input and the output have `FAST_IN` and
/// `FAST_OUT` bytes of room: no length, end or room checks but the match offset's.
/// Returns the new `(ip, op)`.
#[inline(always)]
fn short_sequence(
    src: &[u8],
    dst: &mut [u8],
    ip: usize,
    op: usize,
    token: u8,
) -> Result<(usize, usize), ImageError> {
    // Fixed-size windows: indexing them by at most 15 + constants needs no checks.
    let Some(input) = src.get(ip..).and_then(<[u8]>::first_chunk::<FAST_IN>) else {
        return bad("short sequence past input end");
    };
    let lit = usize::from(token >> 4);
    let Some(out) = dst.get_mut(op..).and_then(<[u8]>::first_chunk_mut::<WILD>) else {
        return bad("short sequence past output end");
    };
    let Some(literals) = input.get(1..).and_then(<[u8]>::first_chunk::<WILD>) else {
        return bad("short sequence literals");
    };
    *out = *literals;
    let (Some(&lo), Some(&hi)) = (input.get(1 + lit), input.get(2 + lit)) else {
        return bad("truncated match offset");
    };
    let (ip, op) = (ip + 3 + lit, op + lit);
    let offset = usize::from(u16::from_le_bytes([lo, hi]));
    if offset == 0 || offset > op {
        return bad("bad match offset");
    }
    let mlen = usize::from(token & 15) + 4;
    let start = op - offset;
    if offset >= 8 {
        // One window from the match's source to 32 bytes past `op`: the moves inside it
        // are at offsets its length (`offset + 32`, `offset` being under 65,536) bounds.
        let Some(win) = dst
            .get_mut(start..)
            .and_then(|w| w.get_mut(..offset + 2 * WILD))
        else {
            return bad("match copy out of range");
        };
        if offset >= WILD {
            move_n::<WILD>(win, 0, offset)?;
            if mlen > WILD {
                move_n::<WILD>(win, WILD, offset + WILD)?;
            }
        } else {
            move_n::<8>(win, 0, offset)?;
            move_n::<8>(win, 8, offset + 8)?;
            if mlen > WILD {
                move_n::<8>(win, WILD, offset + WILD)?;
            }
        }
    } else {
        copy_pattern(dst, start, op, offset, mlen)?;
    }
    Ok((ip, op + mlen))
}

/// Continue an extended length (`base` is 15) with 255-continued bytes.
#[inline]
fn read_len(src: &[u8], ip: &mut usize, base: usize) -> Result<usize, ImageError> {
    let mut len = base;
    loop {
        let Some(&b) = src.get(*ip) else {
            return bad("truncated length");
        };
        *ip += 1;
        len = len.saturating_add(usize::from(b));
        if b != 255 {
            return Ok(len);
        }
    }
}

/// For an offset below 8: the smallest multiple of it that is at least 8 (a source
/// that far back repeats the same pattern and lies wholly before an 8-byte step).
const PATTERN_STEP: [usize; 8] = [8, 8, 8, 9, 8, 10, 12, 14];

/// Copy `len` bytes from `op - offset` to `op` with LZ4 overlap semantics, possibly
/// writing past `op + len` (never past `dst`). Caller guarantees `0 < offset <= op`
/// and `op + len <= dst.len()`.
#[inline]
fn copy_match(dst: &mut [u8], op: usize, offset: usize, len: usize) -> Result<(), ImageError> {
    let Some(start) = op.checked_sub(offset) else {
        return bad("match before output start");
    };
    let room = match dst.len().checked_sub(op) {
        Some(r) if r >= len => r,
        _ => return bad("match past output end"),
    };
    if offset >= WILD {
        if len <= 2 * WILD && room >= 2 * WILD {
            // The common short match: one or two moves, the second's source written
            // already.
            move_n::<WILD>(dst, start, op)?;
            if len > WILD {
                move_n::<WILD>(dst, start + WILD, op + WILD)?;
            }
            return Ok(());
        }
        if room >= len.next_multiple_of(WILD) {
            let mut done = 0;
            while done < len {
                move_n::<WILD>(dst, start + done, op + done)?;
                done += WILD;
            }
            return Ok(());
        }
    } else if offset >= 8 {
        if room >= len.next_multiple_of(8) {
            let mut done = 0;
            while done < len {
                move_n::<8>(dst, start + done, op + done)?;
                done += 8;
            }
            return Ok(());
        }
    } else if offset == 1 {
        let Some(&b) = dst.get(start) else {
            return bad("match before output start");
        };
        if let Some(d) = dst.get_mut(op..op + len) {
            d.fill(b);
        }
        return Ok(());
    } else if room >= len.next_multiple_of(8).max(8) {
        return copy_pattern(dst, start, op, offset, len);
    }
    // Near the end of `dst`: exact copies.
    if offset >= len {
        dst.copy_within(start..start + len, op);
        return Ok(());
    }
    copy_bytes(dst, start, op, len)
}

/// Copies a match of `offset` 2 to 7 (a short repeating pattern) from `start` to `op`,
/// writing `len` rounded up to 8 bytes, at least 8 (the caller checked the room): the
/// first 8 bytes one by one, then 8-byte moves from `step` back (a multiple of
/// `offset`, so the same pattern, and at least 8, so already written).
#[inline]
fn copy_pattern(
    dst: &mut [u8],
    start: usize,
    op: usize,
    offset: usize,
    len: usize,
) -> Result<(), ImageError> {
    copy_bytes(dst, start, op, 8)?;
    let step = PATTERN_STEP.get(offset).copied().unwrap_or(8);
    let mut done = 8;
    while done < len {
        move_n::<8>(dst, op + done - step, op + done)?;
        done += 8;
    }
    Ok(())
}

/// Copies `len` bytes one at a time, front to back (a source overlapping the
/// destination repeats what was just written, as LZ4 means).
fn copy_bytes(dst: &mut [u8], from: usize, to: usize, len: usize) -> Result<(), ImageError> {
    for i in 0..len {
        let Some(&b) = dst.get(from + i) else {
            return bad("match copy out of range");
        };
        let Some(d) = dst.get_mut(to + i) else {
            return bad("match copy out of range");
        };
        *d = b;
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

    /// Runs of short repeating patterns (match offsets 1 to 20) between random bytes.
    fn patterns() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 1..20), 1usize..120),
            0..120,
        )
        .prop_map(|runs| {
            let mut v = Vec::new();
            for (pat, n) in runs {
                v.extend(pat.iter().cycle().take(pat.len() + n));
            }
            v
        })
    }

    /// Every proper prefix of a block is an error or decodes short when the whole output
    /// is asked for (the caller takes short as corrupt): a cut stream never passes for a
    /// complete one.
    fn assert_cuts_fail(data: &[u8]) {
        let c = lz4_flex::block::compress(data);
        let mut out = vec![0u8; data.len()];
        for k in 0..c.len() {
            let r = decompress(&c[..k], &mut out);
            assert!(
                r.as_ref().is_err() || r.as_ref().is_ok_and(|&n| n < data.len()),
                "a block cut to {k} of {} bytes decoded whole",
                c.len()
            );
        }
    }

    #[test]
    fn truncated_blocks_are_errors() {
        let text: Vec<u8> = b"erofs image lz4 pcluster "
            .iter()
            .cycle()
            .take(3000)
            .copied()
            .collect();
        assert_cuts_fail(&text);
        let mut mixed = Vec::new();
        for i in 0u32..400 {
            mixed.extend_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
            mixed.extend(std::iter::repeat_n((i % 7) as u8, (i % 23) as usize));
        }
        assert_cuts_fail(&mixed);
    }

    #[test]
    fn bad_offsets_are_errors() {
        let mut out = [0u8; 64];
        // 4 literals, then a match 5 back (before the output start).
        let before = [0x40, b'a', b'b', b'c', b'd', 5, 0, 0x50, 1, 2, 3, 4, 5];
        assert!(decompress(&before, &mut out).is_err());
        // Offset 0.
        let zero = [0x40, b'a', b'b', b'c', b'd', 0, 0, 0x50, 1, 2, 3, 4, 5];
        assert!(decompress(&zero, &mut out).is_err());
        // The same with offset 4 is fine: "abcd" repeated, then 5 literals.
        let ok = [0x40, b'a', b'b', b'c', b'd', 4, 0, 0x50, 1, 2, 3, 4, 5];
        assert_eq!(decompress(&ok, &mut out[..13]).unwrap(), 13);
        assert_eq!(&out[..13], b"abcdabcd\x01\x02\x03\x04\x05");
    }

    proptest! {
        #[test]
        fn patterns_roundtrip(data in patterns(), cut in 0usize..30000, slack in 0usize..40) {
            let c = lz4_flex::block::compress(&data);
            // Exact buffers and buffers with room past the end (the fast copies' overshoot).
            let mut out = vec![0u8; data.len() + slack];
            let exact = data.len();
            prop_assert_eq!(decompress(&c, &mut out[..exact]).unwrap(), exact);
            prop_assert_eq!(&out[..exact], &data[..]);
            prop_assert_eq!(decompress(&c, &mut out).unwrap(), exact);
            prop_assert_eq!(&out[..exact], &data[..]);
            let n = cut.min(data.len());
            let mut part = vec![0u8; n];
            prop_assert_eq!(decompress(&c, &mut part).unwrap(), n);
            prop_assert_eq!(&part[..], &data[..n]);
        }

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

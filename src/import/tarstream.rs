//! A tar reader for image layers and archives: v7, ustar, GNU and PAX headers, GNU long
//! names, and sparse files (old GNU `S` entries, PAX `GNU.sparse` 0.0, 0.1 and 1.0).
//!
//! PAX records are split by their length prefix (`<len> <key>=<value>\n`), never at a
//! newline: a value may hold any byte. File capabilities (`security.capability` is
//! `01 00 00 02 0a ...` for `cap_dac_override,cap_fowner+ep`), ACLs and other binary
//! xattrs do (the tar crate 0.4 splits records at `\n` and fails on them).
//!
//! Only parsing: [`Reader::next`] yields an entry's header fields (PAX and GNU long-name
//! records applied), and [`Reader::data`] reads its data; what is not read is skipped by the
//! next call. Global PAX headers (`g`) are read and ignored, as docker does, and so are
//! `SCHILY.acl.*` text ACLs (binary `SCHILY.xattr.system.posix_acl_*` records are xattrs).

use std::io::{self, Read};

const BLOCK: u64 = 512;
/// Largest PAX or GNU long-name header read into memory.
const MAX_META: u64 = 16 << 20;
/// Most chunks a sparse file may have.
const MAX_SPARSE_CHUNKS: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Regular,
    Link,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
    /// Any other type flag (volume labels, multi-volume continuations...).
    Other(u8),
}

/// A sparse file: its full size and where each stored chunk goes, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sparse {
    pub size: u64,
    pub chunks: Vec<(u64, u64)>,
}

/// One entry's header, with PAX and GNU long-name records applied.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: Vec<u8>,
    pub link: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch, as the archive says (negative before 1970).
    pub mtime: i64,
    /// Nanoseconds added to `mtime` (0..1e9): from a PAX `mtime` with a fraction, else 0.
    pub mtime_nsec: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Bytes of data stored in the archive (for a sparse file: its chunks, without the map).
    pub size: u64,
    /// `SCHILY.xattr.*` records, in archive order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub sparse: Option<Sparse>,
    /// Where the entry's data starts in the stream.
    pub data_offset: u64,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn truncated(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("truncated archive: it ends inside {what}"),
    )
}

/// A field up to its first NUL.
fn cstr(field: &[u8]) -> &[u8] {
    field
        .iter()
        .position(|&b| b == 0)
        .map_or(field, |i| &field[..i])
}

/// A numeric header field: octal text (spaces and NULs around it), or GNU base-256 (the
/// high bit of the first byte set; two's complement when negative).
fn number(field: &[u8], what: &str) -> io::Result<i64> {
    if let Some(&first) = field.first()
        && first & 0x80 != 0
    {
        // Negative numbers (first byte 0xff) are two's complement: start from all ones.
        let neg = first & 0x40 != 0;
        let mut v: i128 = if neg { -1 } else { 0 };
        for (i, &b) in field.iter().enumerate() {
            let b = if i == 0 && !neg { b & 0x7f } else { b };
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(i128::from(b)))
                .ok_or_else(|| bad(format!("{what}: base-256 number out of range")))?;
        }
        return i64::try_from(v).map_err(|_| bad(format!("{what}: number out of range")));
    }
    let t: &[u8] = {
        let s = field
            .iter()
            .position(|&b| b != b' ' && b != 0)
            .unwrap_or(field.len());
        let e = field
            .iter()
            .rposition(|&b| b != b' ' && b != 0)
            .map_or(s, |i| i + 1);
        &field[s..e.max(s)]
    };
    if t.is_empty() {
        return Ok(0);
    }
    if !t.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return Err(bad(format!(
            "{what}: not an octal number: {:?}",
            String::from_utf8_lossy(t)
        )));
    }
    std::str::from_utf8(t)
        .ok()
        .and_then(|s| i64::from_str_radix(s, 8).ok())
        .ok_or_else(|| bad(format!("{what}: octal number out of range")))
}

fn unsigned(field: &[u8], what: &str) -> io::Result<u64> {
    u64::try_from(number(field, what)?).map_err(|_| bad(format!("{what}: negative")))
}

/// A decimal PAX value (a fraction is dropped; `mtime` is read by [`pax_time`]).
fn decimal(value: &[u8], what: &str) -> io::Result<i64> {
    let s = std::str::from_utf8(value).map_err(|_| bad(format!("PAX {what}: not text")))?;
    let int = s.split('.').next().unwrap_or("");
    let digits = int.strip_prefix('-').unwrap_or(int);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(format!("PAX {what}: not a number: {s:?}")));
    }
    int.parse()
        .map_err(|_| bad(format!("PAX {what}: out of range: {s:?}")))
}

/// A PAX time (`mtime`): `[-]SECONDS[.FRACTION]`, as seconds and nanoseconds with the
/// nanoseconds always counted forward (`-1.25` is -2 s + 750,000,000 ns, as `struct
/// timespec` holds it). Digits past the ninth of the fraction are dropped (truncated, as
/// GNU tar reads them); seconds past what an i64 holds saturate (the importer bounds every
/// time anyway: `import::mtime`).
fn pax_time(value: &[u8], what: &str) -> io::Result<(i64, u32)> {
    let s = std::str::from_utf8(value).map_err(|_| bad(format!("PAX {what}: not text")))?;
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let (neg, digits) = match int.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, int),
    };
    let is_num = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if digits.is_empty() || !is_num(digits) || !is_num(frac) {
        return Err(bad(format!("PAX {what}: not a number: {s:?}")));
    }
    // Only digits are left: a parse error is an overflow.
    let secs: i64 = int.parse().unwrap_or(if neg { i64::MIN } else { i64::MAX });
    let mut nsec: u32 = 0;
    for i in 0..9 {
        let d = frac.as_bytes().get(i).map_or(0, |b| u32::from(b - b'0'));
        nsec = nsec * 10 + d;
    }
    if neg && nsec > 0 {
        return Ok((secs.saturating_sub(1), 1_000_000_000 - nsec));
    }
    Ok((secs, nsec))
}

fn decimal_u64(value: &[u8], what: &str) -> io::Result<u64> {
    u64::try_from(decimal(value, what)?).map_err(|_| bad(format!("PAX {what}: negative")))
}

/// The records of a PAX extended header, split by their length prefix.
pub fn pax_records(mut data: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    // Some writers pad the header's data with NULs.
    while data.first().is_some_and(|&b| b != 0) {
        let sp = data
            .iter()
            .take(20)
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("malformed PAX record: no length"))?;
        let digits = &data[..sp];
        let len: usize = if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(digits)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(usize::MAX)
        } else {
            return Err(bad("malformed PAX record: bad length"));
        };
        if len <= sp + 1 || len > data.len() {
            return Err(bad(format!(
                "malformed PAX record: length {len} does not fit the {} bytes left",
                data.len()
            )));
        }
        let rec = data[sp + 1..len]
            .strip_suffix(b"\n")
            .ok_or_else(|| bad("malformed PAX record: no newline at its end"))?;
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("malformed PAX record: no '='"))?;
        out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

/// A `GNU.sparse.map` value (0.1): `offset,size,offset,size...`.
fn sparse_map_01(value: &[u8]) -> io::Result<Vec<(u64, u64)>> {
    let nums = value
        .split(|&b| b == b',')
        .filter(|s| !s.is_empty())
        .map(|s| decimal_u64(s, "GNU.sparse.map"))
        .collect::<io::Result<Vec<u64>>>()?;
    if nums.len() % 2 != 0 || nums.len() / 2 > MAX_SPARSE_CHUNKS {
        return Err(bad("GNU.sparse.map: odd or huge number of values"));
    }
    Ok(nums.chunks(2).map(|c| (c[0], c[1])).collect())
}

/// Checks a sparse map against the stored size and the full size.
fn check_sparse(s: &Sparse, stored: u64) -> io::Result<()> {
    let mut end = 0u64;
    let mut sum = 0u64;
    for &(off, len) in &s.chunks {
        let e = off
            .checked_add(len)
            .ok_or_else(|| bad("sparse map: chunk out of range"))?;
        if off < end || e > s.size {
            return Err(bad(format!(
                "sparse map: chunk {off}+{len} overlaps or lies past the file's size {}",
                s.size
            )));
        }
        end = e;
        sum += len;
    }
    if sum != stored {
        return Err(bad(format!(
            "sparse map: its chunks hold {sum} bytes but the entry stores {stored}"
        )));
    }
    Ok(())
}

/// PAX records of the next entry, as they apply to it.
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<(i64, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse_major: Option<u64>,
    sparse_name: Option<Vec<u8>>,
    sparse_size: Option<u64>,
    sparse_map: Vec<(u64, u64)>,
    sparse_pending_offset: Option<u64>,
    sparse: bool,
}

impl Pax {
    fn apply(&mut self, records: Vec<(Vec<u8>, Vec<u8>)>) -> io::Result<()> {
        for (k, v) in records {
            match k.as_slice() {
                // An empty value takes the header's field back (POSIX).
                b"path" => self.path = (!v.is_empty()).then_some(v),
                b"linkpath" => self.linkpath = (!v.is_empty()).then_some(v),
                b"size" if !v.is_empty() => self.size = Some(decimal_u64(&v, "size")?),
                b"uid" if !v.is_empty() => self.uid = Some(decimal_u64(&v, "uid")?),
                b"gid" if !v.is_empty() => self.gid = Some(decimal_u64(&v, "gid")?),
                b"mtime" if !v.is_empty() => self.mtime = Some(pax_time(&v, "mtime")?),
                b"GNU.sparse.major" => {
                    self.sparse = true;
                    self.sparse_major = Some(decimal_u64(&v, "GNU.sparse.major")?);
                }
                b"GNU.sparse.minor" => self.sparse = true,
                b"GNU.sparse.name" => {
                    self.sparse = true;
                    self.sparse_name = Some(v);
                }
                b"GNU.sparse.realsize" | b"GNU.sparse.size" => {
                    self.sparse = true;
                    self.sparse_size = Some(decimal_u64(&v, "GNU.sparse.size")?);
                }
                b"GNU.sparse.map" => {
                    self.sparse = true;
                    self.sparse_map = sparse_map_01(&v)?;
                }
                b"GNU.sparse.numblocks" => self.sparse = true,
                b"GNU.sparse.offset" => {
                    self.sparse = true;
                    self.sparse_pending_offset = Some(decimal_u64(&v, "GNU.sparse.offset")?);
                }
                b"GNU.sparse.numbytes" => {
                    self.sparse = true;
                    let off = self
                        .sparse_pending_offset
                        .take()
                        .ok_or_else(|| bad("GNU.sparse.numbytes without GNU.sparse.offset"))?;
                    if self.sparse_map.len() >= MAX_SPARSE_CHUNKS {
                        return Err(bad("too many sparse chunks"));
                    }
                    self.sparse_map
                        .push((off, decimal_u64(&v, "GNU.sparse.numbytes")?));
                }
                _ => {
                    if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                        self.xattrs.push((name.to_vec(), v));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads a tar stream entry by entry.
pub struct Reader<R> {
    inner: R,
    pos: u64,
    /// Data bytes of the current entry not read yet, and the padding after them.
    left: u64,
    pad: u64,
    ended: bool,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Reader<R> {
        Reader {
            inner,
            pos: 0,
            left: 0,
            pad: 0,
            ended: false,
        }
    }

    /// Was the end-of-archive block (a block of zeros) read? An archive that ends without
    /// it was cut at an entry boundary.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The stream, positioned after the last block read.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Reads the rest of the current entry's data.
    pub fn data(&mut self) -> Data<'_, R> {
        Data(self)
    }

    fn read_exact_or_eof(&mut self, buf: &mut [u8], what: &str) -> io::Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(truncated(what)),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pos += buf.len() as u64;
        Ok(true)
    }

    fn skip(&mut self, n: u64, what: &str) -> io::Result<()> {
        let got = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        self.pos += got;
        if got != n {
            return Err(truncated(what));
        }
        Ok(())
    }

    /// Reads `size` bytes of a metadata entry's data (and its padding).
    fn read_meta(&mut self, size: u64, what: &str) -> io::Result<Vec<u8>> {
        if size > MAX_META {
            return Err(bad(format!("{what} of {size} bytes: too large")));
        }
        let mut buf = vec![0u8; size as usize];
        if size > 0 && !self.read_exact_or_eof(&mut buf, what)? {
            return Err(truncated(what));
        }
        self.skip(padding(size), what)?;
        Ok(buf)
    }

    /// The next entry, or `None` at the end of the archive.
    pub fn next(&mut self) -> io::Result<Option<Entry>> {
        if self.ended {
            return Ok(None);
        }
        let (left, pad) = (self.left, self.pad);
        self.left = 0;
        self.pad = 0;
        self.skip(left + pad, "an entry's data")?;
        let mut pax = Pax::default();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let mut h = [0u8; BLOCK as usize];
            let header_at = self.pos;
            if !self.read_exact_or_eof(&mut h, "a header")? {
                if long_name.is_some() || long_link.is_some() || pax.path.is_some() {
                    return Err(truncated("an entry (its extended header has no entry)"));
                }
                return Ok(None);
            }
            if h.iter().all(|&b| b == 0) {
                self.ended = true;
                return Ok(None);
            }
            check_sum(&h, header_at)?;
            let flag = h[156];
            let size = unsigned(&h[124..136], "size")?;
            match flag {
                b'x' => {
                    let data = self.read_meta(size, "a PAX header")?;
                    pax.apply(pax_records(&data)?)?;
                    continue;
                }
                b'g' => {
                    self.read_meta(size, "a global PAX header")?;
                    continue;
                }
                b'L' => {
                    long_name = Some(cstr(&self.read_meta(size, "a GNU long name")?).to_vec());
                    continue;
                }
                b'K' => {
                    long_link = Some(cstr(&self.read_meta(size, "a GNU long link")?).to_vec());
                    continue;
                }
                _ => {}
            }
            return self
                .entry(&h, flag, size, pax, long_name, long_link)
                .map(Some);
        }
    }

    fn entry(
        &mut self,
        h: &[u8; BLOCK as usize],
        flag: u8,
        header_size: u64,
        pax: Pax,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> io::Result<Entry> {
        let posix = &h[257..263] == b"ustar\0";
        let mut name = cstr(&h[..100]).to_vec();
        let prefix = cstr(&h[345..500]);
        if posix && !prefix.is_empty() {
            let mut p = prefix.to_vec();
            p.push(b'/');
            p.extend_from_slice(&name);
            name = p;
        }
        let name = pax.path.clone().or(long_name).unwrap_or(name);
        let link = pax
            .linkpath
            .clone()
            .or(long_link)
            .unwrap_or_else(|| cstr(&h[157..257]).to_vec());
        let kind = match flag {
            0 if name.ends_with(b"/") => Kind::Dir,
            0 | b'0' | b'7' | b'S' => Kind::Regular,
            b'1' => Kind::Link,
            b'2' => Kind::Symlink,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            // GNU dump directories carry a listing as data: still a directory.
            b'5' | b'D' => Kind::Dir,
            b'6' => Kind::Fifo,
            other => Kind::Other(other),
        };
        let dev = |f: &[u8], what| -> io::Result<u32> {
            if !matches!(kind, Kind::Char | Kind::Block) {
                return Ok(0);
            }
            u32::try_from(unsigned(f, what)?).map_err(|_| bad(format!("{what} out of range")))
        };
        let mut size = pax.size.unwrap_or(header_size);
        let (mtime, mtime_nsec) = match pax.mtime {
            Some(t) => t,
            None => (number(&h[136..148], "mtime")?, 0),
        };
        let mut e = Entry {
            link,
            kind,
            mode: (unsigned(&h[100..108], "mode")? & 0o7777) as u32,
            uid: match pax.uid {
                Some(u) => u,
                None => unsigned(&h[108..116], "uid")?,
            },
            gid: match pax.gid {
                Some(g) => g,
                None => unsigned(&h[116..124], "gid")?,
            },
            mtime,
            mtime_nsec,
            dev_major: dev(&h[329..337], "device major")?,
            dev_minor: dev(&h[337..345], "device minor")?,
            size,
            xattrs: pax.xattrs,
            sparse: None,
            data_offset: 0,
            name,
        };
        if flag == b'S' {
            e.sparse = Some(self.old_gnu_sparse(h)?);
        }
        self.left = size;
        self.pad = padding(size);
        if pax.sparse && e.kind == Kind::Regular {
            if let Some(n) = pax.sparse_name {
                e.name = n;
            }
            let full = pax
                .sparse_size
                .ok_or_else(|| bad("PAX sparse file without GNU.sparse.realsize"))?;
            let chunks = if pax.sparse_major == Some(1) {
                self.sparse_map_10()?
            } else {
                pax.sparse_map
            };
            size = self.left;
            e.sparse = Some(Sparse { size: full, chunks });
        }
        if let Some(s) = &e.sparse {
            check_sparse(s, size)?;
        }
        e.size = size;
        e.data_offset = self.pos;
        Ok(e)
    }

    /// An old GNU sparse header's map (4 entries in the header, 21 in each extension block).
    fn old_gnu_sparse(&mut self, h: &[u8; BLOCK as usize]) -> io::Result<Sparse> {
        let mut chunks = Vec::new();
        let mut push = |f: &[u8]| -> io::Result<()> {
            let off = unsigned(&f[..12], "sparse offset")?;
            let len = unsigned(&f[12..24], "sparse size")?;
            if off != 0 || len != 0 {
                if chunks.len() >= MAX_SPARSE_CHUNKS {
                    return Err(bad("too many sparse chunks"));
                }
                chunks.push((off, len));
            }
            Ok(())
        };
        for i in 0..4 {
            push(&h[386 + 24 * i..386 + 24 * (i + 1)])?;
        }
        let size = unsigned(&h[483..495], "sparse real size")?;
        let mut extended = h[482] != 0;
        while extended {
            let mut b = [0u8; BLOCK as usize];
            if !self.read_exact_or_eof(&mut b, "a sparse header")? {
                return Err(truncated("a sparse header"));
            }
            for i in 0..21 {
                push(&b[24 * i..24 * (i + 1)])?;
            }
            extended = b[504] != 0;
        }
        Ok(Sparse { size, chunks })
    }

    /// A PAX 1.0 sparse map, at the start of the entry's data: decimal numbers, one a line
    /// (the count, then offset and size pairs), padded to a block.
    fn sparse_map_10(&mut self) -> io::Result<Vec<(u64, u64)>> {
        let mut text: Vec<u8> = Vec::new();
        let mut nums: Vec<u64> = Vec::new();
        let mut want: Option<usize> = None;
        let mut consumed = 0usize;
        loop {
            while let Some(nl) = text[consumed..].iter().position(|&b| b == b'\n') {
                let n = decimal_u64(&text[consumed..consumed + nl], "sparse map")?;
                consumed += nl + 1;
                match want {
                    None => {
                        let n = usize::try_from(n).unwrap_or(usize::MAX);
                        if n > MAX_SPARSE_CHUNKS {
                            return Err(bad("sparse map: too many chunks"));
                        }
                        want = Some(n * 2);
                    }
                    Some(_) => nums.push(n),
                }
                if want == Some(nums.len()) {
                    return Ok(nums.chunks(2).map(|c| (c[0], c[1])).collect());
                }
            }
            if self.left < BLOCK {
                return Err(bad("sparse map longer than the entry"));
            }
            let mut b = [0u8; BLOCK as usize];
            let mut d = self.data();
            d.read_exact(&mut b)?;
            text.extend_from_slice(&b);
        }
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

fn check_sum(h: &[u8; BLOCK as usize], at: u64) -> io::Result<()> {
    let want = unsigned(&h[148..156], "checksum")?;
    let (mut u, mut s) = (0u64, 0i64);
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        u += u64::from(b);
        s += i64::from(b as i8);
    }
    if want != u && i64::try_from(want).ok() != Some(s) {
        return Err(bad(format!(
            "bad header checksum at byte {at} (not a tar archive, or a corrupt one)"
        )));
    }
    Ok(())
}

/// The data of the current entry; a stream that ends early is an `UnexpectedEof` error.
pub struct Data<'a, R>(&'a mut Reader<R>);

impl<R: Read> Read for Data<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = &mut *self.0;
        if r.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = buf.len().min(usize::try_from(r.left).unwrap_or(usize::MAX));
        let n = r.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(truncated("an entry's data"));
        }
        r.left -= n as u64;
        r.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;

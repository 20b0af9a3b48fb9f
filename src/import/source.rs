//! What SOURCE is, found from its contents (magic bytes), never from its name.

use std::io::Read;
use std::path::Path;

use super::{ImportError, Result};

/// The erofs superblock magic, at byte 1024 of an image.
pub const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
const EROFS_MAGIC_OFFSET: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory: the root file tree.
    Dir,
    /// An OCI image layout directory (`oci-layout` + `index.json`).
    OciDir,
    /// A tar archive; whether it is a root tree or an image archive (docker save, OCI
    /// layout tar) is found when it is indexed.
    Tar { gzip: bool },
    /// An erofs image, used as is.
    Erofs,
}

impl Kind {
    pub fn describe(&self) -> &'static str {
        match self {
            Kind::Dir => "a directory",
            Kind::OciDir => "an OCI image layout",
            Kind::Tar { gzip: false } => "a tar archive",
            Kind::Tar { gzip: true } => "a gzip-compressed tar archive",
            Kind::Erofs => "an erofs image",
        }
    }
}

/// Is `block` (the first 512 bytes of a file) a tar header? ustar magic, or a valid
/// checksum for old v7 archives.
pub fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < 512 {
        return false;
    }
    if &block[257..262] == b"ustar" {
        return true;
    }
    let field = &block[148..156];
    let s: String = field
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .map(|&b| b as char)
        .skip_while(|c| *c == ' ')
        .collect();
    let Ok(want) = u32::from_str_radix(s.trim(), 8) else {
        return false;
    };
    let sum: u32 = block[..512]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u32
            }
        })
        .sum();
    block[0] != 0 && sum == want
}

pub fn detect(path: &Path) -> Result<Kind> {
    let meta = std::fs::metadata(path).map_err(|e| ImportError::io(path.display(), e))?;
    if meta.is_dir() {
        if path.join("oci-layout").is_file() && path.join("index.json").is_file() {
            return Ok(Kind::OciDir);
        }
        return Ok(Kind::Dir);
    }
    if !meta.is_file() {
        return Err(ImportError::source(
            path.display(),
            "not a directory or a regular file",
        ));
    }
    let mut head = Vec::with_capacity(4096);
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut head))
        .map_err(|e| ImportError::io(path.display(), e))?;
    if head.len() >= EROFS_MAGIC_OFFSET + 4 {
        let m = &head[EROFS_MAGIC_OFFSET..EROFS_MAGIC_OFFSET + 4];
        if u32::from_le_bytes([m[0], m[1], m[2], m[3]]) == EROFS_MAGIC {
            return Ok(Kind::Erofs);
        }
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(Kind::Tar { gzip: true });
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(ImportError::source(
            path.display(),
            "zstd-compressed archives are not supported; decompress it first (zstd -d)",
        ));
    }
    if is_tar_header(&head) {
        return Ok(Kind::Tar { gzip: false });
    }
    Err(ImportError::source(
        path.display(),
        "not a directory, a tar archive (plain or gzip), an erofs image or an OCI image",
    ))
}

/// Decompresses a gzip file (all members) into `out`.
pub fn gunzip_to(src: &Path, out: &Path) -> Result<()> {
    let f = std::fs::File::open(src).map_err(|e| ImportError::io(src.display(), e))?;
    let mut gz = flate2::read::MultiGzDecoder::new(std::io::BufReader::with_capacity(1 << 20, f));
    let mut o = std::fs::File::create(out).map_err(|e| ImportError::io(out.display(), e))?;
    std::io::copy(&mut gz, &mut o)
        .map_err(|e| ImportError::source(src.display(), format!("decompressing: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_headers() {
        // A one-entry archive, with a v7 (old) header and with a ustar header.
        for (kind, mut h) in [
            ("v7", tar::Header::new_old()),
            ("ustar", tar::Header::new_ustar()),
        ] {
            let mut b = tar::Builder::new(Vec::new());
            h.set_path("a").expect("path");
            h.set_size(0);
            h.set_cksum();
            b.append(&h, std::io::empty()).expect("append");
            let tar = b.into_inner().expect("tar");
            assert!(is_tar_header(&tar), "{kind}");
        }
        assert!(!is_tar_header(&[0u8; 512]));
        assert!(!is_tar_header(&[b'x'; 512]));
        assert!(!is_tar_header(b"short"));
    }
}

//! OCI image layouts and `docker save` archives: from `index.json` (or `manifest.json`) to
//! the ordered list of layers and the image config.
//!
//! - OCI layout (a directory, or a tar of one such as docker >= 25 `docker save` writes):
//!   `oci-layout` + `index.json` -> a manifest (an image index is followed, nested indexes
//!   too; among several manifests the one whose `org.opencontainers.image.ref.name` is the
//!   tag being imported wins, else the one for linux on this machine's architecture, else
//!   the only one) -> config + layers, blobs under `blobs/sha256/<hex>`. Every blob is
//!   checked against its digest. The image is named by its manifest's digest.
//! - Legacy `docker save` (a top-level `manifest.json` listing `Config` and `Layers` paths,
//!   layers possibly symlinked to each other): no manifest blob exists, so the image is
//!   named by the sha256 of its erofs image.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::layer;
use super::{ImportError, Result};
use crate::store::Digest;

/// Largest JSON document read (index, manifest, config).
const MAX_JSON: u64 = 64 << 20;
/// Deepest chain of nested image indexes followed.
const MAX_NESTING: usize = 8;

/// Where an image's files are: a directory or a tar archive.
pub trait Blobs {
    /// Opens the file at `rel` (a `/`-separated path inside the layout).
    fn open(&self, rel: &str) -> Result<Box<dyn Read + '_>>;
    fn exists(&self, rel: &str) -> bool;
    /// How to name `rel` in messages.
    fn describe(&self, rel: &str) -> String;

    fn read_small(&self, rel: &str) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open(rel)?
            .take(MAX_JSON + 1)
            .read_to_end(&mut buf)
            .map_err(|e| ImportError::io(self.describe(rel), e))?;
        if buf.len() as u64 > MAX_JSON {
            return Err(ImportError::source(
                self.describe(rel),
                "larger than 64 MiB",
            ));
        }
        Ok(buf)
    }
}

/// Cleans a path inside a layout; refuses one that leaves it.
fn clean_rel(rel: &str) -> Option<String> {
    let comps = layer::clean_path(rel.as_bytes()).ok()?;
    if comps.is_empty() {
        return None;
    }
    String::from_utf8(comps.join(&b'/')).ok()
}

/// An OCI image layout directory.
pub struct DirBlobs {
    root: PathBuf,
}

impl DirBlobs {
    pub fn new(root: &Path) -> DirBlobs {
        DirBlobs {
            root: root.to_path_buf(),
        }
    }
}

impl Blobs for DirBlobs {
    fn open(&self, rel: &str) -> Result<Box<dyn Read + '_>> {
        let clean = clean_rel(rel).ok_or_else(|| {
            ImportError::source(self.describe(rel), "path leaves the image layout")
        })?;
        let f = std::fs::File::open(self.root.join(&clean))
            .map_err(|e| ImportError::io(self.describe(rel), e))?;
        Ok(Box::new(io::BufReader::with_capacity(1 << 20, f)))
    }

    fn exists(&self, rel: &str) -> bool {
        clean_rel(rel).is_some_and(|c| self.root.join(c).is_file())
    }

    fn describe(&self, rel: &str) -> String {
        self.root.join(rel).display().to_string()
    }
}

#[derive(Debug, Clone)]
enum TarLoc {
    File { offset: u64, size: u64 },
    Symlink(String),
    HardLink(String),
}

/// A plain tar archive holding an image (docker save, or an OCI layout), indexed once so
/// blobs are read in place by offset.
pub struct TarBlobs {
    file: PathBuf,
    shown: PathBuf,
    entries: HashMap<String, TarLoc>,
}

impl TarBlobs {
    /// Indexes `tar` (uncompressed; `shown` names the user's file in messages). Returns
    /// `None` when the archive is not an image (no `manifest.json`, nor `oci-layout` and
    /// `index.json`, at its top): it is then a root file tree.
    pub fn index(tar: &Path, shown: &Path) -> Result<Option<TarBlobs>> {
        let err = |e: io::Error| {
            ImportError::source(shown.display(), format!("reading the archive: {e}"))
        };
        let f = std::fs::File::open(tar).map_err(|e| ImportError::io(shown.display(), e))?;
        let mut archive = tar::Archive::new(f);
        let mut entries = HashMap::new();
        for e in archive.entries_with_seek().map_err(err)? {
            let e = e.map_err(err)?;
            let Some(name) = clean_rel(&String::from_utf8_lossy(&e.path_bytes())) else {
                continue;
            };
            let loc = match e.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => TarLoc::File {
                    offset: e.raw_file_position(),
                    size: e.size(),
                },
                tar::EntryType::Symlink => match e.link_name_bytes() {
                    Some(t) => TarLoc::Symlink(String::from_utf8_lossy(&t).into_owned()),
                    None => continue,
                },
                tar::EntryType::Link => match e.link_name_bytes() {
                    Some(t) => TarLoc::HardLink(String::from_utf8_lossy(&t).into_owned()),
                    None => continue,
                },
                _ => continue,
            };
            entries.insert(name, loc);
        }
        let is_image = entries.contains_key("manifest.json")
            && docker_manifest_is_valid(tar, &entries)
            || (entries.contains_key("oci-layout") && entries.contains_key("index.json"));
        if !is_image {
            return Ok(None);
        }
        Ok(Some(TarBlobs {
            file: tar.to_path_buf(),
            shown: shown.to_path_buf(),
            entries,
        }))
    }

    fn resolve(&self, rel: &str) -> Option<(u64, u64)> {
        let mut cur = clean_rel(rel)?;
        for _ in 0..16 {
            match self.entries.get(&cur)? {
                TarLoc::File { offset, size } => return Some((*offset, *size)),
                TarLoc::HardLink(t) => cur = clean_rel(t)?,
                TarLoc::Symlink(t) => {
                    let base = match cur.rfind('/') {
                        Some(i) if !t.starts_with('/') => format!("{}/{t}", &cur[..i]),
                        _ => t.clone(),
                    };
                    cur = clean_rel(&base)?;
                }
            }
        }
        None
    }
}

/// Is the archive's `manifest.json` a docker-save manifest (an array of objects with `Layers`)?
fn docker_manifest_is_valid(tar: &Path, entries: &HashMap<String, TarLoc>) -> bool {
    let Some(TarLoc::File { offset, size }) = entries.get("manifest.json") else {
        return false;
    };
    if *size > MAX_JSON {
        return false;
    }
    let read = || -> io::Result<Vec<u8>> {
        let mut f = std::fs::File::open(tar)?;
        f.seek(SeekFrom::Start(*offset))?;
        let mut buf = Vec::new();
        f.take(*size).read_to_end(&mut buf)?;
        Ok(buf)
    };
    let Ok(bytes) = read() else { return false };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Array(items)) => items
            .iter()
            .all(|i| i.get("Layers").is_some_and(Value::is_array)),
        _ => false,
    }
}

impl Blobs for TarBlobs {
    fn open(&self, rel: &str) -> Result<Box<dyn Read + '_>> {
        let (offset, size) = self
            .resolve(rel)
            .ok_or_else(|| ImportError::source(self.describe(rel), "not in the archive"))?;
        let mut f = std::fs::File::open(&self.file)
            .map_err(|e| ImportError::io(self.shown.display(), e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| ImportError::io(self.shown.display(), e))?;
        Ok(Box::new(io::BufReader::with_capacity(
            1 << 20,
            f.take(size),
        )))
    }

    fn exists(&self, rel: &str) -> bool {
        self.resolve(rel).is_some()
    }

    fn describe(&self, rel: &str) -> String {
        format!("{}:{rel}", self.shown.display())
    }
}

/// One layer to apply.
#[derive(Debug, Clone)]
pub struct LayerRef {
    /// Path of the blob inside the layout or archive.
    pub path: String,
    /// Its digest, when the format gives one (checked while reading).
    pub digest: Option<Digest>,
    pub size: Option<u64>,
}

/// What to build: the layers in order, the image config and the manifest's digest.
#[derive(Debug)]
pub struct Plan {
    pub layers: Vec<LayerRef>,
    pub config: Value,
    pub manifest_digest: Option<Digest>,
    /// The manifest blob, as it is named by `manifest_digest` (kept as `manifest.json`).
    pub manifest: Option<Vec<u8>>,
}

fn blob_path(desc: &Value, blobs: &dyn Blobs, what: &str) -> Result<(String, Digest)> {
    let d = desc.get("digest").and_then(Value::as_str).ok_or_else(|| {
        ImportError::source(blobs.describe(what), "descriptor without a \"digest\"")
    })?;
    let Some(hex) = d.strip_prefix("sha256:") else {
        return Err(ImportError::source(
            blobs.describe(what),
            format!("unsupported digest {d:?} (only sha256 is supported)"),
        ));
    };
    let digest = Digest::parse_hex(hex).ok_or_else(|| {
        ImportError::source(blobs.describe(what), format!("malformed digest {d:?}"))
    })?;
    Ok((format!("blobs/sha256/{hex}"), digest))
}

/// Reads a small blob and checks its digest.
fn read_verified(blobs: &dyn Blobs, path: &str, digest: &Digest) -> Result<Vec<u8>> {
    if !blobs.exists(path) {
        return Err(ImportError::source(blobs.describe(path), "missing blob"));
    }
    let bytes = blobs.read_small(path)?;
    let got = Digest::from_bytes(Sha256::digest(&bytes).into());
    if got != *digest {
        return Err(ImportError::source(
            blobs.describe(path),
            format!("content does not match its digest (sha256:{got})"),
        ));
    }
    Ok(bytes)
}

fn parse_json(blobs: &dyn Blobs, path: &str, bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes)
        .map_err(|e| ImportError::source(blobs.describe(path), format!("malformed JSON: {e}")))
}

/// The architecture name OCI uses for this machine.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Chooses one descriptor of an index's `manifests`.
fn pick<'a>(
    manifests: &'a [Value],
    tag: &str,
    reference: &str,
    blobs: &dyn Blobs,
    path: &str,
) -> Result<&'a Value> {
    if manifests.is_empty() {
        return Err(ImportError::source(
            blobs.describe(path),
            "the index lists no manifests",
        ));
    }
    if manifests.len() == 1 {
        return Ok(&manifests[0]);
    }
    let ref_name = |m: &Value| {
        m.get("annotations")
            .and_then(|a| a.get("org.opencontainers.image.ref.name"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let mut cands: Vec<&Value> = manifests
        .iter()
        .filter(|m| ref_name(m).is_some_and(|n| n == tag || n == reference))
        .collect();
    if cands.is_empty() {
        cands = manifests.iter().collect();
    }
    if cands.len() > 1 {
        let platform = |m: &Value| {
            let p = m.get("platform");
            let s = |k| {
                p.and_then(|p| p.get(k))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            (s("os"), s("architecture"))
        };
        let host: Vec<&Value> = cands
            .iter()
            .copied()
            .filter(|m| platform(m) == (Some("linux".into()), Some(host_arch().into())))
            .collect();
        if !host.is_empty() {
            cands = host;
        }
    }
    match cands.as_slice() {
        [one] => Ok(one),
        _ => {
            let list: Vec<String> = cands
                .iter()
                .map(|m| {
                    let d = m.get("digest").and_then(Value::as_str).unwrap_or("?");
                    let p = m.get("platform").map(|p| p.to_string()).unwrap_or_default();
                    let n = ref_name(m).unwrap_or_default();
                    format!("{d} {n} {p}").trim().to_string()
                })
                .collect();
            Err(ImportError::source(
                blobs.describe(path),
                format!(
                    "{} manifests and none is for linux/{} or named {tag:?}: {}",
                    cands.len(),
                    host_arch(),
                    list.join("; ")
                ),
            ))
        }
    }
}

fn is_index(v: &Value) -> bool {
    let mt = v.get("mediaType").and_then(Value::as_str).unwrap_or("");
    mt.contains("image.index")
        || mt.contains("manifest.list")
        || (mt.is_empty() && v.get("manifests").is_some())
}

/// Works out what to build from an OCI layout or docker-save archive. `reference` is the
/// `REPO:TAG` being imported (used to choose among several images).
pub fn plan(blobs: &dyn Blobs, reference: &str) -> Result<Plan> {
    if blobs.exists("oci-layout") && blobs.exists("index.json") {
        plan_oci(blobs, reference)
    } else if blobs.exists("manifest.json") {
        plan_docker(blobs, reference)
    } else {
        Err(ImportError::source(
            blobs.describe(""),
            "not an image: neither oci-layout + index.json nor manifest.json",
        ))
    }
}

fn plan_oci(blobs: &dyn Blobs, reference: &str) -> Result<Plan> {
    let tag = reference.rsplit(':').next().unwrap_or(reference);
    let layout = parse_json(blobs, "oci-layout", &blobs.read_small("oci-layout")?)?;
    if let Some(v) = layout.get("imageLayoutVersion").and_then(Value::as_str)
        && !v.starts_with("1.")
    {
        return Err(ImportError::source(
            blobs.describe("oci-layout"),
            format!("unsupported imageLayoutVersion {v:?}"),
        ));
    }
    let mut path = "index.json".to_string();
    let mut doc = parse_json(blobs, &path, &blobs.read_small(&path)?)?;
    let mut manifest_digest = None;
    let mut bytes = Vec::new();
    for _ in 0..=MAX_NESTING {
        if !is_index(&doc) {
            let digest = manifest_digest.ok_or_else(|| {
                ImportError::source(blobs.describe(&path), "index.json is not an image index")
            })?;
            let mut plan = plan_manifest(blobs, &path, &doc, digest)?;
            plan.manifest = Some(bytes);
            return Ok(plan);
        }
        let manifests = doc
            .get("manifests")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                ImportError::source(blobs.describe(&path), "image index without \"manifests\"")
            })?;
        let desc = pick(manifests, tag, reference, blobs, &path)?;
        let (p, digest) = blob_path(desc, blobs, &path)?;
        bytes = read_verified(blobs, &p, &digest)?;
        doc = parse_json(blobs, &p, &bytes)?;
        path = p;
        manifest_digest = Some(digest);
    }
    Err(ImportError::source(
        blobs.describe(&path),
        "image indexes nested too deeply",
    ))
}

fn plan_manifest(blobs: &dyn Blobs, path: &str, manifest: &Value, digest: Digest) -> Result<Plan> {
    let config_desc = manifest
        .get("config")
        .ok_or_else(|| ImportError::source(blobs.describe(path), "manifest without \"config\""))?;
    let (cpath, cdigest) = blob_path(config_desc, blobs, path)?;
    let config = parse_json(blobs, &cpath, &read_verified(blobs, &cpath, &cdigest)?)?;
    let descs = manifest
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| ImportError::source(blobs.describe(path), "manifest without \"layers\""))?;
    let mut layers = Vec::new();
    for d in descs {
        let (p, ld) = blob_path(d, blobs, path)?;
        if !blobs.exists(&p) {
            return Err(ImportError::source(
                blobs.describe(&p),
                "missing layer blob",
            ));
        }
        layers.push(LayerRef {
            path: p,
            digest: Some(ld),
            size: d.get("size").and_then(Value::as_u64),
        });
    }
    Ok(Plan {
        layers,
        config,
        manifest_digest: Some(digest),
        manifest: None,
    })
}

/// `docker save`'s own names for an image: "alpine:latest" for docker.io/library/alpine.
fn docker_names(reference: &str) -> Vec<String> {
    let mut out = vec![reference.to_string()];
    for p in [
        "docker.io/library/",
        "docker.io/",
        "index.docker.io/library/",
    ] {
        if let Some(r) = reference.strip_prefix(p) {
            out.push(r.to_string());
        }
    }
    out
}

fn plan_docker(blobs: &dyn Blobs, reference: &str) -> Result<Plan> {
    let path = "manifest.json";
    let doc = parse_json(blobs, path, &blobs.read_small(path)?)?;
    let items = doc
        .as_array()
        .ok_or_else(|| ImportError::source(blobs.describe(path), "not a JSON array"))?;
    let names = docker_names(reference);
    let item = match items.as_slice() {
        [] => return Err(ImportError::source(blobs.describe(path), "lists no image")),
        [one] => one,
        many => {
            let hits: Vec<&Value> = many
                .iter()
                .filter(|i| {
                    i.get("RepoTags")
                        .and_then(Value::as_array)
                        .is_some_and(|t| {
                            t.iter()
                                .any(|t| t.as_str().is_some_and(|t| names.iter().any(|n| n == t)))
                        })
                })
                .collect();
            match hits.as_slice() {
                [one] => *one,
                _ => {
                    return Err(ImportError::source(
                        blobs.describe(path),
                        format!(
                            "{} images in the archive and none (or several) tagged {reference:?}; \
                             import with the --tag of one of them",
                            many.len()
                        ),
                    ));
                }
            }
        }
    };
    let cpath = item
        .get("Config")
        .and_then(Value::as_str)
        .ok_or_else(|| ImportError::source(blobs.describe(path), "image without \"Config\""))?;
    let config = parse_json(blobs, cpath, &blobs.read_small(cpath)?)?;
    let mut layers = Vec::new();
    for l in item
        .get("Layers")
        .and_then(Value::as_array)
        .ok_or_else(|| ImportError::source(blobs.describe(path), "image without \"Layers\""))?
    {
        let p = l.as_str().ok_or_else(|| {
            ImportError::source(blobs.describe(path), "a layer path is not a string")
        })?;
        if !blobs.exists(p) {
            return Err(ImportError::source(blobs.describe(p), "missing layer"));
        }
        // Newer docker writes layers as OCI blobs: their names are their digests.
        let digest = p.strip_prefix("blobs/sha256/").and_then(Digest::parse_hex);
        layers.push(LayerRef {
            path: p.to_string(),
            digest,
            size: None,
        });
    }
    Ok(Plan {
        layers,
        config,
        manifest_digest: None,
        manifest: None,
    })
}

/// Hashes what is read through it.
struct Hashing<R> {
    inner: R,
    hasher: std::rc::Rc<std::cell::RefCell<Sha256>>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.borrow_mut().update(&buf[..n]);
        Ok(n)
    }
}

/// Applies one layer (plain tar or gzip, found by magic bytes) to `tree`, checking its digest;
/// its directories' xattrs go into `dirs`.
pub fn apply_layer(
    blobs: &dyn Blobs,
    l: &LayerRef,
    tree: &Path,
    dirs: &mut layer::DirXattrs,
) -> Result<()> {
    let what = blobs.describe(&l.path);
    let hasher = std::rc::Rc::new(std::cell::RefCell::new(Sha256::new()));
    let mut raw = io::BufReader::with_capacity(
        1 << 20,
        Hashing {
            inner: blobs.open(&l.path)?,
            hasher: hasher.clone(),
        },
    );
    let magic = {
        let b = io::BufRead::fill_buf(&mut raw).map_err(|e| ImportError::io(&what, e))?;
        b.get(..4).map(<[u8]>::to_vec).unwrap_or_else(|| b.to_vec())
    };
    let opts = layer::Options { whiteouts: true };
    let result = if magic.starts_with(&[0x1f, 0x8b]) {
        let mut gz = flate2::bufread::MultiGzDecoder::new(raw);
        let r = layer::apply_layer(tree, &mut gz, opts, dirs);
        // The digest covers the whole blob.
        r.and_then(|()| {
            io::copy(&mut gz.into_inner(), &mut io::sink())
                .map(drop)
                .map_err(layer::LayerError::Read)
        })
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(ImportError::source(
            what,
            "zstd-compressed layers are not supported",
        ));
    } else {
        layer::apply_layer(tree, &mut raw, opts, dirs)
    };
    result.map_err(|e| e.into_import(&what))?;
    if let Some(want) = l.digest {
        let got = Digest::from_bytes(hasher.borrow_mut().clone().finalize().into());
        if got != want {
            return Err(ImportError::source(
                what,
                format!("content does not match its digest (sha256:{got})"),
            ));
        }
    }
    Ok(())
}

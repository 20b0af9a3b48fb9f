//! OCI image layouts and `docker save` archives: from `index.json` (or `manifest.json`) to
//! the ordered list of layers and the image config.
//!
//! - OCI layout (a directory, or a tar of one such as docker >= 25 `docker save` writes):
//!   `oci-layout` + `index.json` -> a manifest (an image index is followed, nested indexes
//!   too; among several manifests the one whose `org.opencontainers.image.ref.name` is the
//!   tag being imported wins, else the one that best fits the platform asked, `--platform`
//!   or this machine's ([`super::platform`]), else the only one) -> config + layers, blobs under `blobs/sha256/<hex>`. Every blob is
//!   checked against its digest. The image is named by its manifest's digest.
//! - Legacy `docker save` (a top-level `manifest.json` listing `Config` and `Layers` paths,
//!   layers possibly symlinked to each other): no manifest blob exists, so the image is
//!   named by the sha256 of its erofs image.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::layer;
use super::platform::{self, Platform};
use super::tarstream::Kind;
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
    /// `index.json`, at its top): it is then a root file tree. An archive that ends without
    /// its end-of-archive blocks was cut (at an entry boundary) and is refused, as is one
    /// that looks like an image archive but is not a whole one.
    pub fn index(tar: &Path, shown: &Path) -> Result<Option<TarBlobs>> {
        let err = |e: io::Error| {
            ImportError::source(shown.display(), format!("reading the archive: {e}"))
        };
        let f = std::fs::File::open(tar).map_err(|e| ImportError::io(shown.display(), e))?;
        let mut reader = super::tarstream::Reader::new(io::BufReader::with_capacity(1 << 20, f));
        let mut entries = HashMap::new();
        while let Some(e) = reader.next().map_err(err)? {
            let Some(name) = clean_rel(&String::from_utf8_lossy(&e.name)) else {
                continue;
            };
            let loc = match e.kind {
                Kind::Regular if e.sparse.is_none() => TarLoc::File {
                    offset: e.data_offset,
                    size: e.size,
                },
                Kind::Symlink => TarLoc::Symlink(String::from_utf8_lossy(&e.link).into_owned()),
                Kind::Link => TarLoc::HardLink(String::from_utf8_lossy(&e.link).into_owned()),
                _ => continue,
            };
            entries.insert(name, loc);
        }
        if !reader.ended() {
            return Err(ImportError::source(
                shown.display(),
                "truncated archive: it ends without its end-of-archive blocks",
            ));
        }
        let is_image = entries.contains_key("manifest.json")
            && docker_manifest_is_valid(tar, &entries)
            || (entries.contains_key("oci-layout") && entries.contains_key("index.json"));
        if !is_image {
            if let Some(why) = looks_like_an_image(&entries) {
                return Err(ImportError::source(
                    shown.display(),
                    format!("{why}: not a whole image archive (cut or damaged?)"),
                ));
            }
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

/// Why an archive that is not an image looks like a part of one (`None` for a root tree):
/// an `oci-layout` at its top, or a `manifest.json` beside `docker save`'s `repositories`,
/// `blobs/` or `<id>/layer.tar`. A root file tree holds none of these at its top.
fn looks_like_an_image(entries: &HashMap<String, TarLoc>) -> Option<String> {
    if entries.contains_key("oci-layout") {
        return Some("an OCI layout (oci-layout) without a usable index.json".into());
    }
    let docker_parts = entries.contains_key("repositories")
        || entries.keys().any(|k| {
            k.starts_with("blobs/sha256/")
                || k.strip_suffix("/layer.tar")
                    .is_some_and(|d| !d.is_empty() && !d.contains('/'))
        });
    if docker_parts {
        return Some(if entries.contains_key("manifest.json") {
            "a docker save archive whose manifest.json is not a valid one".into()
        } else {
            "a docker save archive without manifest.json".into()
        });
    }
    None
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
    /// The sha256 of the uncompressed tar, from the config's `rootfs.diff_ids`.
    pub diff_id: Option<Digest>,
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

/// The config's `rootfs.diff_ids`: `Ok(None)` when it lists none.
fn diff_ids(config: &Value, blobs: &dyn Blobs, cpath: &str) -> Result<Option<Vec<Digest>>> {
    let Some(ids) = config
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
    else {
        return Ok(None);
    };
    ids.iter()
        .map(|d| {
            d.as_str()
                .and_then(|d| d.strip_prefix("sha256:"))
                .and_then(Digest::parse_hex)
                .ok_or_else(|| {
                    ImportError::source(
                        blobs.describe(cpath),
                        format!("rootfs.diff_ids: {d} is not a sha256 digest"),
                    )
                })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The diff ID of each of `n` layers: the config must list one per layer.
fn layer_diff_ids(
    config: &Value,
    n: usize,
    required: bool,
    blobs: &dyn Blobs,
    cpath: &str,
) -> Result<Vec<Option<Digest>>> {
    match diff_ids(config, blobs, cpath)? {
        Some(ids) if ids.len() == n => Ok(ids.into_iter().map(Some).collect()),
        Some(ids) => Err(ImportError::source(
            blobs.describe(cpath),
            format!(
                "rootfs.diff_ids lists {} layers, but the manifest {n}",
                ids.len()
            ),
        )),
        None if required && n > 0 => Err(ImportError::source(
            blobs.describe(cpath),
            "the image config lists no rootfs.diff_ids (cannot check the layers)",
        )),
        None => Ok(vec![None; n]),
    }
}

fn desc_size(desc: &Value) -> Option<u64> {
    desc.get("size").and_then(Value::as_u64)
}

/// Reads a small blob and checks its digest and its descriptor's size.
fn read_verified(
    blobs: &dyn Blobs,
    path: &str,
    digest: &Digest,
    size: Option<u64>,
) -> Result<Vec<u8>> {
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
    if let Some(want) = size
        && bytes.len() as u64 != want
    {
        return Err(ImportError::source(
            blobs.describe(path),
            format!("{} bytes, but its descriptor says {want}", bytes.len()),
        ));
    }
    Ok(bytes)
}

fn parse_json(blobs: &dyn Blobs, path: &str, bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes)
        .map_err(|e| ImportError::source(blobs.describe(path), format!("malformed JSON: {e}")))
}

/// Chooses one descriptor of an index's `manifests`: the one named by the tag, else the one
/// that best fits `want` ([`Platform::fit`]), else the only one.
fn pick<'a>(
    manifests: &'a [Value],
    tag: &str,
    reference: &str,
    want: &Platform,
    blobs: &dyn Blobs,
    path: &str,
) -> Result<&'a Value> {
    if manifests.is_empty() {
        return Err(ImportError::source(
            blobs.describe(path),
            "the index lists no manifests",
        ));
    }
    let ref_name = |m: &Value| {
        m.get("annotations")
            .and_then(|a| a.get("org.opencontainers.image.ref.name"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let host_level = platform::host_amd64_level();
    let fit = |m: &Value| {
        let p = platform_of(m);
        match (&p.os, &p.arch) {
            (Some(os), Some(arch)) => want.fit(os, arch, p.variant.as_deref(), host_level),
            _ => None,
        }
    };
    if let [one] = manifests {
        // The only image, unless its platform says it is for another machine.
        let p = platform_of(one);
        return if p.is_empty() || is_index(one) || fit(one).is_some() {
            Ok(one)
        } else {
            Err(ImportError::source(
                blobs.describe(path),
                format!("its only image is for {p}, not for {}", want.asked()),
            ))
        };
    }
    let mut cands: Vec<&Value> = manifests
        .iter()
        .filter(|m| ref_name(m).is_some_and(|n| n == tag || n == reference))
        .collect();
    if cands.is_empty() {
        cands = manifests.iter().collect();
    }
    if cands.len() > 1
        && let Some(best) = cands.iter().filter_map(|m| fit(m)).max()
    {
        cands.retain(|m| fit(m) == Some(best));
    }
    match cands.as_slice() {
        [one] => Ok(one),
        _ => {
            let list: Vec<String> = cands
                .iter()
                .map(|m| {
                    let d = m.get("digest").and_then(Value::as_str).unwrap_or("?");
                    let p = platform_of(m);
                    let p = if p.is_empty() {
                        "no platform".to_string()
                    } else {
                        p.to_string()
                    };
                    match ref_name(m) {
                        Some(n) => format!("{n:?} ({p}, {d})"),
                        None => format!("{d} ({p})"),
                    }
                })
                .collect();
            let none_has_platform = cands.iter().all(|m| platform_of(m).is_empty());
            let why = if none_has_platform {
                format!(
                    "{} images, none named {tag:?} (org.opencontainers.image.ref.name) and \
                     none with a platform to choose by",
                    cands.len()
                )
            } else {
                format!(
                    "{} images, none named {tag:?} and not one alone for {}",
                    cands.len(),
                    want.asked()
                )
            };
            Err(ImportError::source(
                blobs.describe(path),
                format!(
                    "{why}; import one with a --tag whose tag is its name, or choose by \
                     --platform os/arch[/variant]: {}",
                    list.join("; ")
                ),
            ))
        }
    }
}

/// The platform an index entry (its `platform` field) or an image config (its top-level
/// fields) is for; every field may be missing.
struct Named {
    os: Option<String>,
    arch: Option<String>,
    variant: Option<String>,
}

impl Named {
    fn is_empty(&self) -> bool {
        self.os.is_none() && self.arch.is_none()
    }
}

impl std::fmt::Display for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let os = self.os.as_deref().unwrap_or("?");
        let arch = self.arch.as_deref().unwrap_or("?");
        write!(f, "{os}/{arch}")?;
        match self.variant.as_deref() {
            Some(v) if !v.is_empty() => write!(f, "/{v}"),
            _ => Ok(()),
        }
    }
}

fn platform_of(v: &Value) -> Named {
    let p = v.get("platform").unwrap_or(v);
    let s = |k| p.get(k).and_then(Value::as_str).map(str::to_string);
    Named {
        os: s("os"),
        arch: s("architecture"),
        variant: s("variant"),
    }
}

/// Media types of an image config (absent: older writers leave it out).
const CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// Is `mt` the media type of a layer imagefs can unpack (a tar: plain, gzip or zstd)?
fn is_layer_type(mt: &str) -> bool {
    let base = mt
        .strip_prefix("application/vnd.oci.image.layer.")
        .map(|r| {
            r.strip_prefix("nondistributable.")
                .unwrap_or(r)
                .strip_prefix("v1.")
        });
    match base {
        Some(Some(t)) => matches!(t, "tar" | "tar+gzip" | "tar+zstd"),
        _ => matches!(
            mt,
            "application/vnd.docker.image.rootfs.diff.tar"
                | "application/vnd.docker.image.rootfs.diff.tar.gzip"
                | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        ),
    }
}

/// Refuses what is not a container image for this machine: an artifact (a Helm chart, a
/// signature...) stored as an OCI manifest, an encrypted layer, a config for another
/// platform.
fn check_image(
    blobs: &dyn Blobs,
    path: &str,
    manifest: &Value,
    config: &Value,
    want: &Platform,
) -> Result<()> {
    let refuse = |why: String| Err(ImportError::source(blobs.describe(path), why));
    let config_type = manifest
        .get("config")
        .and_then(|c| c.get("mediaType"))
        .and_then(Value::as_str);
    if let Some(t) = config_type
        && !CONFIG_TYPES.contains(&t)
    {
        let artifact = manifest
            .get("artifactType")
            .and_then(Value::as_str)
            .unwrap_or(t);
        return refuse(format!(
            "not a container image but an artifact of type {artifact:?} (config media type {t:?})"
        ));
    }
    for l in manifest
        .get("layers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(t) = l.get("mediaType").and_then(Value::as_str) else {
            continue;
        };
        if t.contains("+encrypted") {
            return refuse(format!(
                "an encrypted layer ({t:?}): decrypt the image first (skopeo copy --decryption-key)"
            ));
        }
        if !is_layer_type(t) {
            return refuse(format!(
                "a layer of media type {t:?} is not a file system layer (not a container image?)"
            ));
        }
    }
    check_platform(blobs, path, config, want)
}

/// Refuses an image whose config is for another OS or architecture than the one asked (a
/// config that names neither is taken as it is; its variant is not checked: configs often
/// leave it out).
fn check_platform(blobs: &dyn Blobs, path: &str, config: &Value, want: &Platform) -> Result<()> {
    let p = platform_of(config);
    let os_ok = p.os.as_deref().is_none_or(|os| os == want.os);
    let arch_ok = p
        .arch
        .as_deref()
        .is_none_or(|a| platform::normalize_arch(a) == want.arch);
    if p.is_empty() || (os_ok && arch_ok) {
        return Ok(());
    }
    Err(ImportError::source(
        blobs.describe(path),
        format!("the image is for {p}, not for {}", want.asked()),
    ))
}

fn is_index(v: &Value) -> bool {
    let mt = v.get("mediaType").and_then(Value::as_str).unwrap_or("");
    mt.contains("image.index")
        || mt.contains("manifest.list")
        || (mt.is_empty() && v.get("manifests").is_some())
}

/// Works out what to build from an OCI layout or docker-save archive. `reference` is the
/// `REPO:TAG` being imported (used to choose among several images), `want` the platform.
pub fn plan(blobs: &dyn Blobs, reference: &str, want: &Platform) -> Result<Plan> {
    if blobs.exists("oci-layout") && blobs.exists("index.json") {
        plan_oci(blobs, reference, want)
    } else if blobs.exists("manifest.json") {
        plan_docker(blobs, reference, want)
    } else {
        Err(ImportError::source(
            blobs.describe(""),
            "not an image: neither oci-layout + index.json nor manifest.json",
        ))
    }
}

fn plan_oci(blobs: &dyn Blobs, reference: &str, want: &Platform) -> Result<Plan> {
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
            let mut plan = plan_manifest(blobs, &path, &doc, digest, want)?;
            plan.manifest = Some(bytes);
            return Ok(plan);
        }
        let manifests = doc
            .get("manifests")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                ImportError::source(blobs.describe(&path), "image index without \"manifests\"")
            })?;
        let desc = pick(manifests, tag, reference, want, blobs, &path)?;
        let (p, digest) = blob_path(desc, blobs, &path)?;
        bytes = read_verified(blobs, &p, &digest, desc_size(desc))?;
        doc = parse_json(blobs, &p, &bytes)?;
        path = p;
        manifest_digest = Some(digest);
    }
    Err(ImportError::source(
        blobs.describe(&path),
        "image indexes nested too deeply",
    ))
}

fn plan_manifest(
    blobs: &dyn Blobs,
    path: &str,
    manifest: &Value,
    digest: Digest,
    want: &Platform,
) -> Result<Plan> {
    let config_desc = manifest
        .get("config")
        .ok_or_else(|| ImportError::source(blobs.describe(path), "manifest without \"config\""))?;
    let (cpath, cdigest) = blob_path(config_desc, blobs, path)?;
    let config = parse_json(
        blobs,
        &cpath,
        &read_verified(blobs, &cpath, &cdigest, desc_size(config_desc))?,
    )?;
    check_image(blobs, path, manifest, &config, want)?;
    let descs = manifest
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| ImportError::source(blobs.describe(path), "manifest without \"layers\""))?;
    let ids = layer_diff_ids(&config, descs.len(), false, blobs, &cpath)?;
    let mut layers = Vec::new();
    for (d, diff_id) in descs.iter().zip(ids) {
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
            size: desc_size(d),
            diff_id,
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

fn plan_docker(blobs: &dyn Blobs, reference: &str, want: &Platform) -> Result<Plan> {
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
                    let tags: Vec<&str> = many
                        .iter()
                        .filter_map(|i| i.get("RepoTags").and_then(Value::as_array))
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    let tags = if tags.is_empty() {
                        "none of them is tagged".to_string()
                    } else {
                        format!("its tags: {}", tags.join(", "))
                    };
                    return Err(ImportError::source(
                        blobs.describe(path),
                        format!(
                            "{} images in the archive and {} tagged {reference:?}; import one \
                             with its tag as --tag ({tags})",
                            many.len(),
                            if hits.is_empty() { "none" } else { "several" },
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
    let config_bytes = blobs.read_small(cpath)?;
    // The config's name is its digest (`<hex>.json`, `blobs/sha256/<hex>` since docker 25).
    let named = cpath
        .strip_suffix(".json")
        .or_else(|| cpath.strip_prefix("blobs/sha256/"))
        .and_then(Digest::parse_hex);
    if let Some(want) = named {
        let got = Digest::from_bytes(Sha256::digest(&config_bytes).into());
        if got != want {
            return Err(ImportError::source(
                blobs.describe(cpath),
                format!("content does not match its name (sha256:{got})"),
            ));
        }
    }
    let config = parse_json(blobs, cpath, &config_bytes)?;
    check_platform(blobs, cpath, &config, want)?;
    let paths = item
        .get("Layers")
        .and_then(Value::as_array)
        .ok_or_else(|| ImportError::source(blobs.describe(path), "image without \"Layers\""))?;
    // No manifest blob names the layers here: the config's diff IDs are their only check,
    // as `docker load` makes it.
    let ids = layer_diff_ids(&config, paths.len(), true, blobs, cpath)?;
    let mut layers = Vec::new();
    for (l, diff_id) in paths.iter().zip(ids) {
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
            diff_id,
        });
    }
    Ok(Plan {
        layers,
        config,
        manifest_digest: None,
        manifest: None,
    })
}

/// The sha256 and length of what went through a [`Hashing`] reader.
#[derive(Default)]
struct Tally {
    sha: Sha256,
    bytes: u64,
}

impl Tally {
    fn digest(&self) -> Digest {
        Digest::from_bytes(self.sha.clone().finalize().into())
    }
}

/// Hashes and counts what is read through it.
struct Hashing<R> {
    inner: R,
    tally: Rc<RefCell<Tally>>,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> (Hashing<R>, Rc<RefCell<Tally>>) {
        let tally = Rc::new(RefCell::new(Tally::default()));
        (
            Hashing {
                inner,
                tally: tally.clone(),
            },
            tally,
        )
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut t = self.tally.borrow_mut();
        t.sha.update(&buf[..n]);
        t.bytes += n as u64;
        Ok(n)
    }
}

/// A compressed layer's decoder that gives its source back, to read the blob to its end.
trait Decoder: Read {
    type Source: Read;
    fn into_source(self) -> Self::Source;
}

impl<R: io::BufRead> Decoder for flate2::bufread::MultiGzDecoder<R> {
    type Source = R;
    fn into_source(self) -> R {
        self.into_inner()
    }
}

impl<R: io::BufRead> Decoder for super::zstd::Frames<R> {
    type Source = R;
    fn into_source(self) -> R {
        self.into_inner()
    }
}

/// Unpacks the tar that `decoder` gives; returns the tally of its bytes (the diff ID).
fn unpack_compressed<D: Decoder>(
    decoder: D,
    tree: &Path,
    dirs: &mut layer::DirMeta,
    what: &str,
) -> Result<Rc<RefCell<Tally>>> {
    let opts = layer::Options { whiteouts: true };
    let (mut tar, diff_tally) = Hashing::new(decoder);
    layer::apply_layer(tree, &mut tar, opts, dirs)
        // The digest covers the whole blob.
        .and_then(|()| {
            io::copy(&mut tar.inner.into_source(), &mut io::sink())
                .map(drop)
                .map_err(layer::LayerError::Read)
        })
        .map_err(|e| e.into_import(what))?;
    Ok(diff_tally)
}

/// Applies one layer (plain tar, gzip or zstd, found by magic bytes) to `tree`, checking its
/// digest and size (the blob's) and its diff ID (the uncompressed tar's); its directories'
/// xattrs go into `dirs`.
pub fn apply_layer(
    blobs: &dyn Blobs,
    l: &LayerRef,
    tree: &Path,
    dirs: &mut layer::DirMeta,
) -> Result<()> {
    let what = blobs.describe(&l.path);
    let (blob, blob_tally) = Hashing::new(blobs.open(&l.path)?);
    let mut raw = io::BufReader::with_capacity(1 << 20, blob);
    let magic = {
        let b = io::BufRead::fill_buf(&mut raw).map_err(|e| ImportError::io(&what, e))?;
        b.get(..4).map(<[u8]>::to_vec).unwrap_or_else(|| b.to_vec())
    };
    let opts = layer::Options { whiteouts: true };
    let diff_tally = if magic.starts_with(&[0x1f, 0x8b]) {
        unpack_compressed(flate2::bufread::MultiGzDecoder::new(raw), tree, dirs, &what)?
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        unpack_compressed(super::zstd::Frames::new(raw), tree, dirs, &what)?
    } else {
        layer::apply_layer(tree, &mut raw, opts, dirs).map_err(|e| e.into_import(&what))?;
        blob_tally.clone()
    };
    let blob = blob_tally.borrow();
    if let Some(want) = l.digest {
        let got = blob.digest();
        if got != want {
            return Err(ImportError::source(
                what,
                format!("content does not match its digest (sha256:{got})"),
            ));
        }
    }
    if let Some(want) = l.size
        && blob.bytes != want
    {
        return Err(ImportError::source(
            what,
            format!("{} bytes, but its descriptor says {want}", blob.bytes),
        ));
    }
    if let Some(want) = l.diff_id {
        let got = diff_tally.borrow().digest();
        if got != want {
            return Err(ImportError::source(
                what,
                format!(
                    "the uncompressed layer is sha256:{got}, but the image config's \
                     rootfs.diff_ids lists sha256:{want} for it"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(name: &str, platform: Option<Value>) -> Value {
        let mut e = json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{name}"),
            "size": 1,
        });
        if let Some(p) = platform {
            e["platform"] = p;
        }
        e
    }

    fn amd64(variant: Option<&str>) -> Option<Value> {
        let mut p = json!({"os": "linux", "architecture": "amd64"});
        if let Some(v) = variant {
            p["variant"] = json!(v);
        }
        Some(p)
    }

    /// The digest (here: the name) `pick` chooses for `want`, or its error.
    fn picked(manifests: &[Value], want: &str) -> std::result::Result<String, String> {
        let want = if want == "host" {
            Platform {
                arch: "amd64".into(),
                ..Platform::host()
            }
        } else {
            Platform::parse(want).map_err(|e| e.to_string())?
        };
        let blobs = DirBlobs::new(Path::new("/nonexistent"));
        pick(manifests, "latest", "r:latest", &want, &blobs, "index.json")
            .map(|m| m["digest"].as_str().unwrap_or("").replace("sha256:", ""))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn amd64_and_amd64_v3_in_one_index_is_a_choice_not_an_error() {
        let both = [
            entry("v3", amd64(Some("v3"))),
            entry("plain", amd64(None)),
            entry("arm", Some(json!({"os": "linux", "architecture": "arm64"}))),
        ];
        assert_eq!(picked(&both, "host").as_deref(), Ok("plain"));
        assert_eq!(picked(&both, "linux/amd64").as_deref(), Ok("plain"));
        assert_eq!(picked(&both, "linux/amd64/v3").as_deref(), Ok("v3"));
        assert_eq!(picked(&both, "linux/amd64/v4").as_deref(), Ok("v3"));
        assert_eq!(picked(&both, "linux/amd64/v2").as_deref(), Ok("plain"));
        assert_eq!(picked(&both, "linux/arm64").as_deref(), Ok("arm"));
        let err = picked(&both, "linux/s390x").unwrap_err();
        assert!(err.contains("--platform linux/s390x"), "{err}");
        assert!(
            err.contains("linux/amd64/v3") && err.contains("linux/arm64"),
            "{err}"
        );
    }

    #[test]
    fn only_variants_listed_take_the_best_this_cpu_runs() {
        let level = platform::host_amd64_level();
        let vs = [
            entry("v2", amd64(Some("v2"))),
            entry("v9", amd64(Some("v9"))),
        ];
        if level >= 2 {
            assert_eq!(picked(&vs, "host").as_deref(), Ok("v2"));
        }
        let err = picked(&vs, "linux/amd64/v1").unwrap_err();
        assert!(
            err.contains("not one alone for --platform linux/amd64/v1"),
            "{err}"
        );
        let only = [entry("v9", amd64(Some("v9")))];
        let err = picked(&only, "host").unwrap_err();
        assert!(
            err.contains("its only image is for linux/amd64/v9, not for this machine"),
            "{err}"
        );
        assert_eq!(picked(&only, "linux/amd64/v9").as_deref(), Ok("v9"));
    }

    #[test]
    fn entries_without_a_platform_keep_their_messages() {
        let none = [entry("a", None), entry("b", None)];
        let err = picked(&none, "host").unwrap_err();
        assert!(err.contains("none with a platform to choose by"), "{err}");
        assert!(err.contains("no platform"), "{err}");
        assert_eq!(
            picked(&[entry("a", None)], "linux/arm64").as_deref(),
            Ok("a")
        );
        // a platformless entry beside one that fits: the one that fits
        let mixed = [entry("a", None), entry("plain", amd64(None))];
        assert_eq!(picked(&mixed, "host").as_deref(), Ok("plain"));
    }

    #[test]
    fn a_config_for_another_platform_is_refused_naming_both() {
        let blobs = DirBlobs::new(Path::new("/nonexistent"));
        let arm = json!({"os": "linux", "architecture": "arm64"});
        let host = Platform {
            arch: "amd64".into(),
            ..Platform::host()
        };
        let err = check_platform(&blobs, "c", &arm, &host)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linux/arm64") && err.contains("this machine (linux/amd64)"),
            "{err}"
        );
        let asked = Platform::parse("linux/arm64/v8").unwrap_or_else(|e| panic!("{e}"));
        assert!(check_platform(&blobs, "c", &arm, &asked).is_ok());
        let err = check_platform(
            &blobs,
            "c",
            &json!({"os": "linux", "architecture": "amd64"}),
            &asked,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("linux/amd64, not for --platform linux/arm64/v8"),
            "{err}"
        );
        assert!(check_platform(&blobs, "c", &json!({}), &asked).is_ok());
    }
}

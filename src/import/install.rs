//! Writing hypeman's `metadata.json`, and installing the digest directory and the tag into
//! the store through the store's own install ([`store::install`]), under the store's writer
//! lock.
//!
//! `content/<hex>` is created by one rename of the finished work directory (if it is
//! already there it is kept as is: the same bytes were imported, or pulled, before); then
//! `repositories/<repo>/<tag>` is installed with an atomic rename (an existing tag of that
//! name moves, as `docker tag` does), and a legacy-layout tag of the same name
//! (`<repo>/<tag>`) is removed, as hypeman does when it retags. The image a moved tag named
//! is not collected here: `imagefs gc` does that (DESIGN.md 4, other writers).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{Map, Value};

use super::{ImportError, Result};
use crate::store::fsutil;
use crate::store::install::InstallError;
use crate::store::metadata::{Metadata, Status};
use crate::store::{self, Digest};

/// The fields of a new `metadata.json`.
#[derive(Debug, Clone)]
pub struct MetaInput {
    fields: Map<String, Value>,
}

impl MetaInput {
    /// For an image without a config (directory, tar, erofs).
    pub fn plain(name: &str, digest: Digest, size: u64) -> MetaInput {
        let mut fields = Map::new();
        fields.insert("name".into(), name.into());
        fields.insert("digest".into(), format!("sha256:{digest}").into());
        fields.insert("status".into(), Status::Ready.as_str().into());
        fields.insert("size_bytes".into(), size.into());
        fields.insert("created_at".into(), rfc3339_now().into());
        MetaInput { fields }
    }

    /// From an OCI image config: entrypoint, cmd, env (as hypeman's map), working_dir,
    /// labels, platform and created. Empty ones are left out, as hypeman does.
    pub fn from_config(name: &str, digest: Digest, size: u64, config: &Value) -> MetaInput {
        let mut fields = Map::new();
        fields.insert("name".into(), name.into());
        fields.insert("digest".into(), format!("sha256:{digest}").into());
        let s = |k: &str| {
            config
                .get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        if let (Some(os), Some(arch)) = (s("os"), s("architecture")) {
            let p = match s("variant") {
                Some(v) => format!("{os}/{arch}/{v}"),
                None => format!("{os}/{arch}"),
            };
            fields.insert("platform".into(), p.into());
        }
        fields.insert("status".into(), Status::Ready.as_str().into());
        fields.insert("size_bytes".into(), size.into());
        let cc = config.get("config").cloned().unwrap_or(Value::Null);
        let strings = |k: &str| -> Option<Value> {
            let a = cc.get(k)?.as_array()?;
            let v: Vec<Value> = a
                .iter()
                .filter_map(|x| x.as_str().map(Value::from))
                .collect();
            (!v.is_empty()).then_some(Value::Array(v))
        };
        if let Some(v) = strings("Entrypoint") {
            fields.insert("entrypoint".into(), v);
        }
        if let Some(v) = strings("Cmd") {
            fields.insert("cmd".into(), v);
        }
        if let Some(env) = cc.get("Env").and_then(Value::as_array) {
            let mut m = Map::new();
            for e in env.iter().filter_map(Value::as_str) {
                let (k, v) = e.split_once('=').unwrap_or((e, ""));
                if !k.is_empty() {
                    m.insert(k.to_string(), v.into());
                }
            }
            if !m.is_empty() {
                fields.insert("env".into(), Value::Object(m));
            }
        }
        if let Some(labels) = cc.get("Labels").and_then(Value::as_object) {
            let m: Map<String, Value> = labels
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), Value::from(v))))
                .collect();
            if !m.is_empty() {
                fields.insert("labels".into(), Value::Object(m));
            }
        }
        if let Some(w) = cc
            .get("WorkingDir")
            .and_then(Value::as_str)
            .filter(|w| !w.is_empty())
        {
            fields.insert("working_dir".into(), w.into());
        }
        let created = s("created")
            .filter(|c| looks_like_rfc3339(c))
            .map(str::to_string)
            .unwrap_or_else(rfc3339_now);
        fields.insert("created_at".into(), created.into());
        MetaInput { fields }
    }
}

fn looks_like_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
}

/// Formats a UNIX time as RFC 3339 UTC (`2026-01-02T03:04:05Z`).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339(secs)
}

/// Writes `dir/metadata.json` atomically (0644) and makes the directory and image readable.
pub fn write_metadata(dir: &Path, meta: &MetaInput) -> Result<()> {
    let md = Metadata {
        fields: meta.fields.clone(),
    };
    let path = dir.join("metadata.json");
    fsutil::write_atomic(&path, &md.to_bytes()).map_err(|e| ImportError::io(path.display(), e))?;
    for (p, mode) in [
        (path, 0o644),
        (dir.join("rootfs.erofs"), 0o644),
        (dir.to_path_buf(), 0o755),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| ImportError::io(p.display(), e))?;
    }
    let image = dir.join("rootfs.erofs");
    std::fs::File::open(&image)
        .and_then(|f| f.sync_all())
        .map_err(|e| ImportError::io(image.display(), e))?;
    Ok(())
}

/// Writes `dir/manifest.json` (0644): the OCI manifest blob the directory is named by, byte
/// for byte, as hypeman's content layout keeps it.
pub fn write_manifest(dir: &Path, manifest: &[u8]) -> Result<()> {
    let path = dir.join("manifest.json");
    fsutil::write_atomic(&path, manifest).map_err(|e| ImportError::io(path.display(), e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| ImportError::io(path.display(), e))
}

/// Installs the finished digest directory `built` as `content/<digest>` (unless it exists)
/// and tags it `repo:tag`, with the store's own install ([`store::install::install_image`]).
/// Returns whether the digest was already in the store.
pub fn install(store: &Path, built: &Path, digest: Digest, repo: &str, tag: &str) -> Result<bool> {
    store::install::install_image(store, built, digest, repo, tag).map_err(|e| match e {
        InstallError::Refused { path, reason } => ImportError::Store {
            path: path.display().to_string(),
            reason,
        },
        InstallError::Io { what, error } => ImportError::io(what, error),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn metadata_from_config() {
        let d = Digest::parse_hex(&"ab".repeat(32)).expect("hex");
        let config = serde_json::json!({
            "created": "2024-05-06T07:08:09.123Z",
            "architecture": "amd64", "os": "linux",
            "config": {
                "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"],
                "Env": ["PATH=/usr/bin:/bin", "A=b=c", "EMPTY="],
                "WorkingDir": "/srv", "Labels": {"x": "y"}
            }
        });
        let m = MetaInput::from_config("r/x:1", d, 42, &config).fields;
        assert_eq!(m["name"], "r/x:1");
        assert_eq!(m["digest"], format!("sha256:{d}"));
        assert_eq!(m["status"], "ready");
        assert_eq!(m["size_bytes"], 42);
        assert_eq!(m["platform"], "linux/amd64");
        assert_eq!(m["entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
        assert_eq!(m["cmd"], serde_json::json!(["echo hi"]));
        assert_eq!(
            m["env"],
            serde_json::json!({"PATH": "/usr/bin:/bin", "A": "b=c", "EMPTY": ""})
        );
        assert_eq!(m["working_dir"], "/srv");
        assert_eq!(m["created_at"], "2024-05-06T07:08:09.123Z");
        let bare = MetaInput::from_config("r/x:1", d, 1, &serde_json::json!({})).fields;
        for k in [
            "entrypoint",
            "cmd",
            "env",
            "working_dir",
            "labels",
            "platform",
        ] {
            assert!(!bare.contains_key(k), "{k}");
        }
        assert!(looks_like_rfc3339(
            bare["created_at"].as_str().expect("str")
        ));
    }
}

//! hypeman's `metadata.json`: read for the status, written back with unknown fields kept.
//!
//! It is read only if it is a regular file of at most [`MAX_BYTES`] ([`safe_open`]); anything
//! else leaves the status unknown (so the directory is never collected nor served as ready),
//! with one warning per file.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use parking_lot::Mutex;
use serde_json::{Map, Value};

use super::safe_open;

/// The life cycle of a digest directory, as hypeman records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Pulling,
    Converting,
    Ready,
    Failed,
}

impl Status {
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "pulling" => Status::Pulling,
            "converting" => Status::Converting,
            "ready" => Status::Ready,
            "failed" => Status::Failed,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Pulling => "pulling",
            Status::Converting => "converting",
            Status::Ready => "ready",
            Status::Failed => "failed",
        }
    }

    /// Only finished digests may be collected; a pull in progress never is.
    pub fn collectable(self) -> bool {
        matches!(self, Status::Ready | Status::Failed)
    }
}

/// The parsed file. Fields imagefs does not know stay in `fields` and are written back as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    pub fields: Map<String, Value>,
}

impl Metadata {
    pub fn parse(bytes: &[u8]) -> Result<Metadata, String> {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(fields)) => Ok(Metadata { fields }),
            Ok(_) => Err("metadata.json is not a JSON object".into()),
            Err(e) => Err(format!("metadata.json: {e}")),
        }
    }

    pub fn read(dir: &Path) -> Result<Metadata, String> {
        Metadata::read_io(dir)
            .unwrap_or_else(|e| Err(format!("{}: {e}", dir.join("metadata.json").display())))
    }

    /// [`Metadata::read`], telling a failed read (outer `Err`: EIO, say; it may work next
    /// time) from a file that is no metadata of a finished pull (inner `Err`: missing, not a
    /// regular file, too large, not JSON). Found by the fault tests: a change that decides
    /// from the status (collect or keep) must not take a failed read for "unknown".
    pub fn read_io(dir: &Path) -> std::io::Result<Result<Metadata, String>> {
        use std::io::ErrorKind;
        let path = dir.join("metadata.json");
        let bytes = match safe_open::read_regular(&path, MAX_BYTES) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::InvalidData => {
                warn_once(&path, &e);
                return Ok(Err(e.to_string()));
            }
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                return Ok(Err(format!("{}: {e}", path.display())));
            }
            Err(e) => return Err(e),
        };
        Ok(Metadata::parse(&bytes).map_err(|e| format!("{}: {e}", path.display())))
    }

    pub fn status(&self) -> Option<Status> {
        self.fields
            .get("status")
            .and_then(Value::as_str)
            .and_then(Status::parse)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(&self.fields).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// The largest metadata.json read. hypeman's are under 4 KiB; a larger one is no metadata of
/// a pull, and reading it whole would take the daemon's memory (and time, at every lookup).
pub const MAX_BYTES: u64 = 1 << 20;

/// Logs a refused metadata.json (not a regular file, too large) once per path: the status
/// of its directory is asked at every lookup.
fn warn_once(path: &Path, e: &std::io::Error) {
    static WARNED: LazyLock<Mutex<HashSet<PathBuf>>> = LazyLock::new(Mutex::default);
    if WARNED.lock().insert(path.to_path_buf()) {
        log::warn!(
            "{e}; the status of its digest directory is unknown (never collected, not served as ready)"
        );
    }
}

/// [`read_status`], with a failed read as the outer `Err` ([`Metadata::read_io`]).
pub fn read_status_io(dir: &Path) -> std::io::Result<Result<Status, String>> {
    Ok(Metadata::read_io(dir)?.and_then(|md| {
        md.status().ok_or_else(|| {
            format!(
                "{}: missing or unknown \"status\"",
                dir.join("metadata.json").display()
            )
        })
    }))
}

/// The status of the digest directory `dir`, or why it could not be read.
pub fn read_status(dir: &Path) -> Result<Status, String> {
    let md = Metadata::read(dir)?;
    md.status().ok_or_else(|| {
        format!(
            "{}: missing or unknown \"status\"",
            dir.join("metadata.json").display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let src = br#"{"name":"alpine","digest":"sha256:00","status":"ready","x-extra":{"a":[1,2]},"size_bytes":5}"#;
        let md = Metadata::parse(src).expect("parse");
        assert_eq!(md.status(), Some(Status::Ready));
        let again = Metadata::parse(&md.to_bytes()).expect("reparse");
        assert_eq!(again, md);
        let keys: Vec<_> = again.fields.keys().cloned().collect();
        assert_eq!(keys, ["name", "digest", "status", "x-extra", "size_bytes"]);
    }

    #[test]
    fn statuses() {
        for s in ["pending", "pulling", "converting", "ready", "failed"] {
            assert_eq!(Status::parse(s).map(Status::as_str), Some(s));
        }
        assert!(Status::Ready.collectable() && Status::Failed.collectable());
        assert!(!Status::Pending.collectable() && !Status::Pulling.collectable());
        assert!(!Status::Converting.collectable());
        assert!(Metadata::parse(b"[1]").is_err());
        assert_eq!(
            Metadata::parse(br#"{"status":"weird"}"#).map(|m| m.status()),
            Ok(None)
        );
    }

    #[test]
    fn a_fifo_or_a_huge_metadata_json_leaves_the_status_unknown() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("metadata.json");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644))
            .expect("mkfifo");
        safe_open::tests::unblock_fifo_after(&path, 3);
        let t0 = std::time::Instant::now();
        let e = read_status(d.path()).expect_err("a FIFO has no status");
        assert!(t0.elapsed().as_secs() < 2, "waited on the FIFO");
        assert!(e.contains("a FIFO"), "{e}");
        std::fs::remove_file(&path).expect("rm");
        let f = std::fs::File::create(&path).expect("create");
        f.set_len(MAX_BYTES + 1).expect("set_len");
        let e = read_status(d.path()).expect_err("too large");
        assert!(e.contains("larger than"), "{e}");
        std::fs::write(&path, br#"{"status":"ready"}"#).expect("write");
        assert_eq!(read_status(d.path()), Ok(Status::Ready));
    }
}

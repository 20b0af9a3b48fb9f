//! hypeman's `metadata.json`: read for the status, written back with unknown fields kept.

use std::path::Path;

use serde_json::{Map, Value};

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
        let path = dir.join("metadata.json");
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Metadata::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
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
}

//! `imagefs ls`: one row per tag, then one per digest directory no tag names.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{
    EXIT_FAILED, EXIT_OK, check_store, dir_bytes, human, lock_for_reading, out, status_of,
};
use crate::store::layout::DirKey;

/// Arguments of `imagefs ls`.
#[derive(clap::Args, Debug, Clone)]
pub struct LsArgs {
    /// The hypeman image store (the directory holding `content/`, `repositories/` and legacy
    /// repository directories).
    #[arg(long, value_name = "DIR")]
    pub store: PathBuf,
    /// Print a JSON array of objects (repository, tag, digest, dir, layout, size_bytes, refs,
    /// status, status_error) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One row of the listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// `None` for a content-layout digest directory no tag names.
    pub repository: Option<String>,
    /// `None` for a digest directory no tag names.
    pub tag: Option<String>,
    /// `sha256:<hex>`.
    pub digest: String,
    /// The digest directory, relative to the store.
    pub dir: String,
    /// `content` or `legacy`.
    pub layout: &'static str,
    /// Bytes of the regular files in the digest directory (apparent sizes, as `du -sb`
    /// counts them).
    pub size_bytes: u64,
    /// Tags naming the digest directory (as a mount counts them).
    pub refs: u32,
    /// metadata.json's status, `None` when it cannot be read.
    pub status: Option<&'static str>,
    /// Why the status is unknown.
    pub status_error: Option<String>,
}

/// Reads the rows of the store at `root` (sorted: tags by repository and tag, then untagged
/// digest directories by digest and directory).
pub fn rows(root: &Path) -> Result<Vec<Row>, String> {
    let view = {
        let _lock = lock_for_reading(root)?;
        crate::store::Store::open_view(root).map_err(|e| e.to_string())?
    };
    let mut tagged: Vec<(String, String, DirKey)> = Vec::new();
    for (repo, node) in view.index.nodes() {
        for (tag, t) in &node.tags {
            tagged.push((repo.clone(), tag.to_string(), DirKey::clone(&t.key)));
        }
    }
    tagged.sort();
    let mut untagged: Vec<DirKey> = view
        .dirs()
        .into_iter()
        .filter(|k| view.index.refs(k) == Some(0))
        .collect();
    untagged.sort_by_key(|k| (k.digest(), k.rel_path()));

    let mut info: HashMap<DirKey, (u64, Result<&'static str, String>)> = HashMap::new();
    let mut describe = |key: &DirKey| {
        info.entry(key.clone())
            .or_insert_with(|| {
                (
                    dir_bytes(&root.join(key.rel_path())),
                    status_of(root, key).map(|s| s.as_str()),
                )
            })
            .clone()
    };
    let mut rows = Vec::new();
    let row = |repository: Option<String>,
               tag: Option<String>,
               key: &DirKey,
               size: u64,
               status: Result<&'static str, String>| Row {
        repository,
        tag,
        digest: format!("sha256:{}", key.digest()),
        dir: key.rel_path().to_string_lossy().into_owned(),
        layout: match key {
            DirKey::Content(_) => "content",
            DirKey::Legacy(..) => "legacy",
        },
        size_bytes: size,
        refs: view.index.refs(key).unwrap_or(0),
        status: status.as_ref().ok().copied(),
        status_error: status.err(),
    };
    for (repo, tag, key) in &tagged {
        let (size, status) = describe(key);
        rows.push(row(
            Some(repo.clone()),
            Some(tag.clone()),
            key,
            size,
            status,
        ));
    }
    for key in &untagged {
        let (size, status) = describe(key);
        let repo = match key {
            DirKey::Legacy(r, _) => Some(r.clone()),
            DirKey::Content(_) => None,
        };
        rows.push(row(repo, None, key, size, status));
    }
    Ok(rows)
}

/// The table: `TAG  DIGEST  SIZE  REFS  STATUS`, short digests and human sizes.
pub fn table(rows: &[Row]) -> Vec<String> {
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let name = match (&r.repository, &r.tag) {
                (Some(repo), Some(tag)) => format!("{repo}:{tag}"),
                (Some(repo), None) => format!("{repo}:<none>"),
                _ => "<none>".to_string(),
            };
            let hex = r.digest.trim_start_matches("sha256:");
            [
                name,
                hex.get(..12).unwrap_or(hex).to_string(),
                human(r.size_bytes),
                r.refs.to_string(),
                r.status.unwrap_or("unknown").to_string(),
            ]
        })
        .collect();
    let head = ["TAG", "DIGEST", "SIZE", "REFS", "STATUS"].map(String::from);
    let mut width = head.clone().map(|h| h.len());
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c) {
            *w = (*w).max(s.chars().count());
        }
    }
    std::iter::once(&head)
        .chain(&cells)
        .map(|c| {
            format!(
                "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {}",
                c[0],
                c[1],
                c[2],
                c[3],
                c[4],
                w0 = width[0],
                w1 = width[1],
                w2 = width[2],
                w3 = width[3],
            )
        })
        .collect()
}

pub(crate) fn run_to(args: &LsArgs, o: &mut dyn Write, e: &mut dyn Write) -> i32 {
    let result = check_store(&args.store).and_then(|root| rows(&root));
    let rows = match result {
        Ok(r) => r,
        Err(msg) => {
            out(e, format!("imagefs ls: {msg}"));
            return EXIT_FAILED;
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&rows) {
            Ok(s) => out(o, s),
            Err(err) => {
                out(e, format!("imagefs ls: json: {err}"));
                return EXIT_FAILED;
            }
        }
    } else {
        for line in table(&rows) {
            out(o, line);
        }
    }
    EXIT_OK
}

/// `imagefs ls`; returns the exit status.
pub fn run(args: LsArgs) -> i32 {
    super::with_stdio(|o, e| run_to(&args, o, e))
}

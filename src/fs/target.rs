//! What `ln -s TARGET tags/REPO/TAG` may say, turned into a [`Target`]:
//! `<hex>`, `sha256:<hex>`, any path ending in `digests/<hex>` or `digests/<hex>@<repo>`
//! (one legacy directory of a digest, as `store::images` names it), or a path to another
//! tag of this mount (relative to the new link, or absolute through the mountpoint).

use std::path::Path;

use crate::store::{Digest, DirKey, Target, images, names};

/// Parses `target` for a link created in repository `repo`; `mountpoint` is the mount's
/// absolute path. `None`: the target names neither a digest nor a tag of this mount.
pub fn parse(target: &Path, repo: &str, mountpoint: &Path) -> Option<Target> {
    let s = target.to_str()?;
    if let Some(d) = Digest::parse_ref(s) {
        return Some(Target::Digest(d));
    }
    let comps: Vec<&str> = s
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if let [.., "digests", entry] = comps.as_slice()
        && let Some(t) = entry_target(entry)
    {
        return Some(t);
    }
    // Resolve lexically, from the mount's root, to a path inside the mount.
    let resolved = if s.starts_with('/') {
        let inside = s.strip_prefix(mountpoint.to_str()?)?;
        if !(inside.is_empty() || inside.starts_with('/')) {
            return None;
        }
        names::resolve_lexically(Vec::new(), inside)?
    } else {
        let start = std::iter::once("tags")
            .chain(repo.split('/').filter(|c| !c.is_empty()))
            .collect();
        names::resolve_lexically(start, s)?
    };
    match resolved.as_slice() {
        ["digests", entry] => entry_target(entry),
        ["tags", path @ .., tag] if !path.is_empty() => Some(Target::Tag {
            repo: path.join("/"),
            tag: (*tag).to_string(),
        }),
        _ => None,
    }
}

/// The target an entry name of `digests/` stands for.
fn entry_target(entry: &str) -> Option<Target> {
    Some(match images::parse_entry_name(entry)? {
        (d, None) => Target::Digest(d),
        (d, Some(repo)) => Target::Dir(DirKey::Legacy(repo, d)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex() -> String {
        "0f".repeat(32)
    }

    #[test]
    fn digest_forms() {
        let d = Digest::parse_hex(&hex()).map(Target::Digest);
        let mp = Path::new("/mnt/x");
        for t in [
            hex(),
            format!("sha256:{}", hex()),
            format!("../../digests/{}", hex()),
            format!("/anywhere/digests/{}", hex()),
            format!("digests/{}/", hex()),
        ] {
            assert_eq!(parse(Path::new(&t), "a/b", mp), d, "{t}");
        }
        let dir = Some(Target::Dir(DirKey::Legacy(
            "docker.io/library/x".into(),
            Digest::parse_hex(&hex()).expect("hex"),
        )));
        for t in [
            format!("../../digests/{}@docker.io+library+x", hex()),
            format!("/mnt/x/digests/{}@docker.io+library+x", hex()),
        ] {
            assert_eq!(parse(Path::new(&t), "a/b", mp), dir, "{t}");
        }
        let bad = format!("/anywhere/digests/{}@Docker", hex());
        assert_eq!(parse(Path::new(&bad), "a/b", mp), None);
    }

    #[test]
    fn tag_forms() {
        let mp = Path::new("/mnt/x");
        let want = |r: &str, t: &str| {
            Some(Target::Tag {
                repo: r.into(),
                tag: t.into(),
            })
        };
        assert_eq!(parse(Path::new("latest"), "a/b", mp), want("a/b", "latest"));
        assert_eq!(parse(Path::new("../c/v1"), "a/b", mp), want("a/c", "v1"));
        assert_eq!(
            parse(Path::new("/mnt/x/tags/q/r/t"), "a", mp),
            want("q/r", "t")
        );
        assert_eq!(parse(Path::new("/mnt/xy/tags/q/t"), "a", mp), None);
        assert_eq!(parse(Path::new("../../../../etc"), "a", mp), None);
        assert_eq!(parse(Path::new("../../tags"), "a", mp), None);
        assert_eq!(
            parse(Path::new("../x"), "a", mp),
            None,
            "a tag needs a repository"
        );
    }
}

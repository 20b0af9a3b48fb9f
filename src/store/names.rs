//! Names in the store: digests, repository paths and tags.
//!
//! Repository paths follow the distribution/reference grammar: `/`-separated components,
//! each `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`; the first component may instead be a registry
//! host (`[A-Za-z0-9-]` labels joined by dots, optionally `:port`). Tags are
//! `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`. Every name that reaches the disk went through here.
//!
//! New tags go only under repositories in hypeman's normalized form ([`normalize_repo`]:
//! `docker.io/library/alpine`, not `alpine`), the only names hypeman looks under.

use std::fmt;

/// Longest tag, in bytes (the reference grammar's limit).
pub const MAX_TAG_LEN: usize = 128;
/// Longest repository path, in bytes (the reference grammar's limit for a name).
pub const MAX_REPO_LEN: usize = 255;

/// A sha256 digest, shown as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Parses exactly 64 lowercase hex characters.
    pub fn parse_hex(s: &str) -> Option<Digest> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            out[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
        }
        Some(Digest(out))
    }

    /// Parses `<hex>` or `sha256:<hex>`.
    pub fn parse_ref(s: &str) -> Option<Digest> {
        Digest::parse_hex(s.strip_prefix("sha256:").unwrap_or(s))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    pub fn hex(&self) -> String {
        self.to_string()
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    TooLong,
    Invalid,
}

/// A tag name: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn check_tag(name: &[u8]) -> Result<&str, NameError> {
    if name.len() > MAX_TAG_LEN {
        return Err(NameError::TooLong);
    }
    let ok = match name.split_first() {
        Some((first, rest)) => {
            (first.is_ascii_alphanumeric() || *first == b'_')
                && rest
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
        }
        None => false,
    };
    if !ok {
        return Err(NameError::Invalid);
    }
    std::str::from_utf8(name).map_err(|_| NameError::Invalid)
}

/// One path component of a repository: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
pub fn is_path_component(c: &[u8]) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    let mut need_alnum = true;
    while i < c.len() {
        if alnum(&c[i]) {
            need_alnum = false;
            i += 1;
            continue;
        }
        if need_alnum {
            return false;
        }
        // A separator: `.`, `_`, `__` or one or more `-`; it must be followed by alnum.
        let start = i;
        match c[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if c.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while c.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        debug_assert!(i > start);
        need_alnum = true;
    }
    !c.is_empty() && !need_alnum
}

/// A registry host: dot-separated labels of `[A-Za-z0-9-]` (not starting or ending in `-`),
/// optionally followed by `:port`. As in docker's normalization, a first component is a
/// host only if it has a dot or a port, or is `localhost`.
pub fn is_registry_host(c: &[u8]) -> bool {
    if !(c.contains(&b'.') || c.contains(&b':') || c == b"localhost") {
        return false;
    }
    let (host, port) = match c.iter().position(|&b| b == b':') {
        Some(p) => (&c[..p], Some(&c[p + 1..])),
        None => (c, None),
    };
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.iter().all(u8::is_ascii_digit))
    {
        return false;
    }
    !host.is_empty()
        && host.split(|&b| b == b'.').all(|label| {
            !label.is_empty()
                && label
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                && label.first() != Some(&b'-')
                && label.last() != Some(&b'-')
        })
}

/// Checks one component of a repository path; `first` allows a registry host.
pub fn check_repo_component(c: &[u8], first: bool) -> Result<&str, NameError> {
    if c.len() > MAX_REPO_LEN {
        return Err(NameError::TooLong);
    }
    if is_path_component(c) || (first && is_registry_host(c)) {
        std::str::from_utf8(c).map_err(|_| NameError::Invalid)
    } else {
        Err(NameError::Invalid)
    }
}

/// Checks a whole repository path such as `docker.io/library/alpine`.
pub fn check_repo(path: &str) -> Result<(), NameError> {
    if path.is_empty() {
        return Err(NameError::Invalid);
    }
    if path.len() > MAX_REPO_LEN {
        return Err(NameError::TooLong);
    }
    for (i, c) in path.split('/').enumerate() {
        check_repo_component(c.as_bytes(), i == 0)?;
    }
    Ok(())
}

/// The first component of `path` that is 64 lowercase hex characters, if any. In the legacy
/// layout `STORE/<repo>/<hex>/` is a digest directory, so a repository path with such a
/// component would be taken for a digest of its parent after a remount (and a repository made
/// in the content layout can get a legacy half: a legacy copy, a move). New names never have
/// one ([`super::repo_dirs`], [`super::tags::check_new_tag`]); docker refuses such names too.
pub fn digest_shaped_component(path: &str) -> Option<&str> {
    path.split('/').find(|c| Digest::parse_hex(c).is_some())
}

/// Docker Hub's registry host in a normalized name.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// Docker Hub's legacy host, normalized to [`DEFAULT_DOMAIN`].
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
/// The namespace of Docker Hub's official images.
const OFFICIAL_PREFIX: &str = "library/";

/// The repository name hypeman stores for `path`: docker's normalization
/// (`reference.ParseNormalizedNamed`, then `Domain + "/" + Path`, as hypeman's
/// `ParseNormalizedRef` does). A first component is a registry host when there is a `/`
/// after it and it is `localhost`, contains `.` or `:`, or is not lowercase; otherwise the
/// host is `docker.io`. `index.docker.io` becomes `docker.io`, and a Docker Hub name of
/// one component gets the `library/` namespace:
///
/// `alpine` -> `docker.io/library/alpine`, `docker.io/alpine` -> `docker.io/library/alpine`,
/// `myuser/app` -> `docker.io/myuser/app`, `ghcr.io/a/b` and `localhost:5000/a` unchanged.
pub fn normalize_repo(path: &str) -> String {
    let (domain, remote) = match path.split_once('/') {
        None => (DEFAULT_DOMAIN, path),
        Some(("localhost", rest)) => ("localhost", rest),
        Some((LEGACY_DEFAULT_DOMAIN, rest)) => (DEFAULT_DOMAIN, rest),
        Some((first, rest))
            if first.contains(['.', ':']) || first.to_ascii_lowercase() != first =>
        {
            (first, rest)
        }
        Some(_) => (DEFAULT_DOMAIN, path),
    };
    if domain == DEFAULT_DOMAIN && !remote.contains('/') {
        format!("{domain}/{OFFICIAL_PREFIX}{remote}")
    } else {
        format!("{domain}/{remote}")
    }
}

/// `Some(normalized)` when hypeman would store `path` under another name
/// ([`normalize_repo`]): a tag under `path` would be invisible to it.
pub fn not_normalized(path: &str) -> Option<String> {
    let n = normalize_repo(path);
    (n != path).then_some(n)
}

/// Joins a repository path and a child component ("" is the root of `tags/`).
pub fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}/{child}")
    }
}

/// The parent of a repository path and its last component.
pub fn split_last(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

/// Walks the relative path `rel` from the directory `stack` (its components, from a top
/// that cannot be climbed above), without touching the filesystem. `None` if `rel` climbs
/// above the top.
pub fn resolve_lexically<'a>(mut stack: Vec<&'a str>, rel: &'a str) -> Option<Vec<&'a str>> {
    for c in rel.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                stack.pop()?;
            }
            c => stack.push(c),
        }
    }
    Some(stack)
}

/// Number of components of a repository path ("" has none).
pub fn depth(path: &str) -> usize {
    if path.is_empty() {
        0
    } else {
        path.split('/').count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trips_and_rejects_bad_hex() {
        let h = "a".repeat(64);
        assert_eq!(Digest::parse_hex(&h).map(|d| d.hex()), Some(h.clone()));
        assert_eq!(
            Digest::parse_ref(&format!("sha256:{h}")).map(|d| d.hex()),
            Some(h)
        );
        assert!(Digest::parse_hex(&"A".repeat(64)).is_none());
        assert!(Digest::parse_hex(&"a".repeat(63)).is_none());
        assert!(Digest::parse_hex(&"g".repeat(64)).is_none());
    }

    #[test]
    fn tag_grammar() {
        for ok in ["latest", "v1.2.3", "_x", "A-b_c.d", &"a".repeat(128)] {
            assert!(check_tag(ok.as_bytes()).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "a b", "é"] {
            assert_eq!(check_tag(bad.as_bytes()), Err(NameError::Invalid), "{bad}");
        }
        assert_eq!(
            check_tag("a".repeat(129).as_bytes()),
            Err(NameError::TooLong)
        );
    }

    #[test]
    fn repository_grammar() {
        for ok in [
            "alpine",
            "docker.io/library/alpine",
            "localhost:5000/a/b",
            "a__b",
            "a---b",
            "a.b_c",
            "Registry.Example.com/x",
        ] {
            assert!(check_repo(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "Alpine", "a//b", "/a", "a/", "a___b", "a_", "-a", "a/B", "a/b:1", "x/.y", "a..b",
        ] {
            assert!(check_repo(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn normalization_is_dockers() {
        for (given, want) in [
            ("alpine", "docker.io/library/alpine"),
            ("library/alpine", "docker.io/library/alpine"),
            ("docker.io/alpine", "docker.io/library/alpine"),
            ("index.docker.io/alpine", "docker.io/library/alpine"),
            ("index.docker.io/library/alpine", "docker.io/library/alpine"),
            ("myuser/app", "docker.io/myuser/app"),
            ("a/b/c", "docker.io/a/b/c"),
            ("localhost", "docker.io/library/localhost"),
            ("example.com", "docker.io/library/example.com"),
            ("docker.io/library/alpine", "docker.io/library/alpine"),
            ("docker.io/myuser/app", "docker.io/myuser/app"),
            ("ghcr.io/a/b", "ghcr.io/a/b"),
            ("ghcr.io/a", "ghcr.io/a"),
            ("localhost/a", "localhost/a"),
            ("localhost:5000/a/b", "localhost:5000/a/b"),
            ("Registry.Example.com/x", "Registry.Example.com/x"),
        ] {
            assert_eq!(normalize_repo(given), want, "{given}");
            assert_eq!(
                not_normalized(given),
                (given != want).then(|| want.to_string()),
                "{given}"
            );
            // Normalizing twice changes nothing.
            assert_eq!(normalize_repo(want), want, "{want}");
        }
    }

    #[test]
    fn path_helpers() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a", "b"), "a/b");
        assert_eq!(split_last("a/b/c"), ("a/b", "c"));
        assert_eq!(split_last("a"), ("", "a"));
        assert_eq!(depth(""), 0);
        assert_eq!(depth("a/b"), 2);
        assert_eq!(
            resolve_lexically(vec!["a", "b"], "../c/./d"),
            Some(vec!["a", "c", "d"])
        );
        assert_eq!(resolve_lexically(vec!["a"], "../../x"), None);
    }

    #[test]
    fn digest_shaped_components_are_found() {
        let h = "ab".repeat(32);
        assert_eq!(digest_shaped_component(&format!("foo/{h}")), Some(&*h));
        assert_eq!(digest_shaped_component(&format!("{h}/x")), Some(&*h));
        assert_eq!(digest_shaped_component(&format!("foo/{h}a")), None);
        assert_eq!(digest_shaped_component(&"AB".repeat(32)), None);
        assert_eq!(digest_shaped_component("docker.io/library/alpine"), None);
    }
}

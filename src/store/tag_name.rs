//! A tag name as the index keeps it: up to [`INLINE`] bytes inside the value itself, longer
//! ones on the heap. A million tags are a million names; most are short (`latest`,
//! `v1.2.3`), and a `String` would cost its 24 bytes plus a heap block for each.

use std::borrow::Borrow;
use std::fmt;

/// The longest name kept inline.
const INLINE: usize = 22;

#[derive(Clone)]
pub enum TagName {
    /// `len` bytes of `bytes`, valid UTF-8.
    Inline {
        len: u8,
        bytes: [u8; INLINE],
    },
    Heap(Box<str>),
}

impl TagName {
    pub fn new(s: &str) -> TagName {
        if s.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            TagName::Inline {
                len: s.len() as u8,
                bytes,
            }
        } else {
            TagName::Heap(s.into())
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Built from a `&str` by `new`: always whole UTF-8 characters.
            TagName::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            TagName::Heap(s) => s,
        }
    }

    /// The name's bytes, without the UTF-8 check of [`TagName::as_str`]: compares (a
    /// million of them build the index at mount) and listings need no `str`.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            TagName::Inline { len, bytes } => &bytes[..usize::from(*len)],
            TagName::Heap(s) => s.as_bytes(),
        }
    }
}

impl From<&str> for TagName {
    fn from(s: &str) -> TagName {
        TagName::new(s)
    }
}

impl std::ops::Deref for TagName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// Ordered, compared and hashed as the `str` it holds, so maps keyed by it are searched
/// with a `&str`.
impl Borrow<str> for TagName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for TagName {
    fn eq(&self, other: &TagName) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for TagName {}

impl PartialOrd for TagName {
    fn partial_cmp(&self, other: &TagName) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TagName {
    fn cmp(&self, other: &TagName) -> std::cmp::Ordering {
        // A `str`'s order is its bytes' order: the same as `Borrow<str>` lookups use.
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::hash::Hash for TagName {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}

impl fmt::Debug for TagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_names_read_back_and_sort_as_str() {
        let long = "v".repeat(128);
        let names = [
            "",
            "latest",
            "a".repeat(22).as_str(),
            &"b".repeat(23),
            &long,
            "é-ü",
        ]
        .map(TagName::new);
        assert!(matches!(names[2], TagName::Inline { .. }));
        assert!(matches!(names[3], TagName::Heap(_)));
        for (n, s) in names.iter().zip(["", "latest"]) {
            assert_eq!(n.as_str(), s);
        }
        assert_eq!(names[4].as_str(), long);
        assert_eq!(names[5].as_str(), "é-ü");
        let mut sorted = names.to_vec();
        sorted.sort();
        let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        want.sort();
        assert_eq!(
            sorted.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            want
        );
        assert_eq!(std::mem::size_of::<TagName>(), 24);
    }
}

//! The model and the property test: random operation sequences against a small reference model.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::fixture::*;
use crate::store::layout::{CONTENT, REPOSITORIES};
use crate::store::{RenameMode, Store, Target};

const REPOS: [&str; 3] = ["a", "b/c", "l"];
const LEGACY_REPO: usize = 2;
const TAGS: [&str; 4] = ["t0", "t1", "t2", "t3"];
/// Digests 0..6: where they start and their status. 4 is never tagged at the start.
const DIGESTS: [(bool, &str); 6] = [
    (true, "ready"),
    (true, "ready"),
    (false, "ready"),
    (true, "pending"),
    (true, "ready"),
    (false, "failed"),
];
const INITIAL: [(usize, usize, usize); 6] = [
    (0, 0, 0),
    (0, 1, 1),
    (1, 0, 1),
    (2, 0, 2),
    (2, 1, 5),
    (0, 2, 3),
];

#[derive(Debug, Clone)]
enum Tgt {
    Digest(usize),
    Tag(usize, usize),
}

#[derive(Debug, Clone)]
enum Op {
    Create((usize, usize), Tgt),
    Rename((usize, usize), (usize, usize), RenameMode),
    Remove((usize, usize)),
    Reopen,
}

#[derive(Debug, Clone)]
struct Model {
    tags: BTreeMap<(usize, usize), usize>,
    alive: [bool; 6],
    ever: [bool; 6],
    content: [bool; 6],
}

fn collectable(d: usize) -> bool {
    matches!(DIGESTS[d].1, "ready" | "failed")
}

impl Model {
    fn new() -> Model {
        let mut m = Model {
            tags: BTreeMap::new(),
            alive: [true; 6],
            ever: [false; 6],
            content: [false; 6],
        };
        for (i, (c, _)) in DIGESTS.iter().enumerate() {
            m.content[i] = *c;
        }
        for (r, t, d) in INITIAL {
            m.tags.insert((r, t), d);
            m.ever[d] = true;
        }
        m
    }

    fn fixture() -> Fx {
        let fx = Fx::new();
        for (i, (c, status)) in DIGESTS.iter().enumerate() {
            if *c {
                fx.content(i as u8, status);
            } else {
                fx.legacy(REPOS[LEGACY_REPO], i as u8, status);
            }
        }
        for r in REPOS {
            fx.mkdirs(&format!("{REPOSITORIES}/{r}"));
        }
        for (r, t, d) in INITIAL {
            if DIGESTS[d].0 {
                fx.ctag(REPOS[r], TAGS[t], d as u8);
            } else {
                fx.ltag(REPOS[r], TAGS[t], d as u8);
            }
        }
        fx
    }

    fn referenced(&self, d: usize) -> bool {
        self.tags.values().any(|&x| x == d)
    }

    fn enter(&mut self, d: usize, repo: usize) {
        if repo != LEGACY_REPO {
            self.content[d] = true;
        }
    }

    /// Drops `d` if nothing names it any more and it is collectable; returns its dir if so.
    fn maybe_gc(&mut self, d: usize) -> Vec<String> {
        if !self.referenced(d) && collectable(d) {
            let dir = self.dir(d);
            self.alive[d] = false;
            vec![dir]
        } else {
            vec![]
        }
    }

    fn dir(&self, d: usize) -> String {
        if self.content[d] {
            format!("{CONTENT}/{}", hex(d as u8))
        } else {
            format!("{}/{}", REPOS[LEGACY_REPO], hex(d as u8))
        }
    }

    /// Applies `op`; returns the expected result (collected dirs, or the error's kind).
    fn apply(&mut self, op: &Op) -> Result<Vec<String>, &'static str> {
        match op {
            Op::Reopen => Ok(vec![]),
            Op::Create(at, tgt) => {
                let d = match tgt {
                    Tgt::Digest(d) if self.alive[*d] => *d,
                    Tgt::Digest(_) => return Err("NotFound"),
                    Tgt::Tag(r, t) => *self.tags.get(&(*r, *t)).ok_or("NotFound")?,
                };
                if self.tags.contains_key(at) {
                    return Err("Exists");
                }
                if DIGESTS[d].1 != "ready" {
                    return Err("NotReady");
                }
                self.enter(d, at.0);
                self.tags.insert(*at, d);
                self.ever[d] = true;
                Ok(vec![])
            }
            Op::Remove(at) => {
                let d = self.tags.remove(at).ok_or("NotFound")?;
                Ok(self.maybe_gc(d))
            }
            Op::Rename(from, to, mode) => {
                let Some(&d) = self.tags.get(from) else {
                    return Err("NotFound");
                };
                if from == to {
                    return Ok(vec![]);
                }
                let dst = self.tags.get(to).copied();
                match (mode, dst) {
                    (RenameMode::NoReplace, Some(_)) => Err("Exists"),
                    (RenameMode::Exchange, None) => Err("NotFound"),
                    (RenameMode::Exchange, Some(o)) => {
                        self.enter(o, from.0);
                        self.enter(d, to.0);
                        self.tags.insert(*from, o);
                        self.tags.insert(*to, d);
                        Ok(vec![])
                    }
                    (_, dst) => {
                        self.tags.remove(from);
                        self.enter(d, to.0);
                        self.tags.insert(*to, d);
                        match dst {
                            Some(o) if o != d => Ok(self.maybe_gc(o)),
                            _ => Ok(vec![]),
                        }
                    }
                }
            }
        }
    }

    /// The model in the shape of a [`Snap`]'s tags and dirs.
    fn expected(&self) -> (TagMap, BTreeSet<String>) {
        let tags = self
            .tags
            .iter()
            .map(|(&(r, t), &d)| {
                (
                    (REPOS[r].to_string(), TAGS[t].to_string()),
                    (self.content[d], dg(d as u8)),
                )
            })
            .collect();
        let dirs = (0..6)
            .filter(|&d| self.alive[d])
            .map(|d| self.dir(d))
            .collect();
        (tags, dirs)
    }

    fn assert_matches(&self, store: &Store, ctx: &str) -> Snap {
        // The model's own invariant: a digest dir exists iff it is tagged, or was never
        // tagged, or is not collectable.
        for d in 0..6 {
            assert_eq!(
                self.alive[d],
                self.referenced(d) || !self.ever[d] || !collectable(d),
                "model invariant, digest {d}"
            );
        }
        let s = check(store);
        let (tags, dirs) = self.expected();
        assert_eq!(s.tags, tags, "{ctx}: tags vs model");
        let got: BTreeSet<String> = s.dirs.keys().cloned().collect();
        assert_eq!(got, dirs, "{ctx}: digest dirs vs model");
        s
    }
}

fn slot() -> impl Strategy<Value = (usize, usize)> {
    (0..REPOS.len(), 0..TAGS.len())
}

fn op_strategy(reopen: bool) -> impl Strategy<Value = Op> {
    let mode = prop_oneof![
        Just(RenameMode::Replace),
        Just(RenameMode::NoReplace),
        Just(RenameMode::Exchange),
    ];
    let tgt = prop_oneof![
        (0..DIGESTS.len()).prop_map(Tgt::Digest),
        slot().prop_map(|(r, t)| Tgt::Tag(r, t)),
    ];
    let reopen_weight = if reopen { 1 } else { 0 };
    prop_oneof![
        4 => (slot(), tgt).prop_map(|(a, t)| Op::Create(a, t)),
        4 => (slot(), slot(), mode).prop_map(|(a, b, m)| Op::Rename(a, b, m)),
        3 => slot().prop_map(Op::Remove),
        reopen_weight => Just(Op::Reopen),
    ]
}

fn run_ops(ops: &[Op]) {
    let fx = Model::fixture();
    let mut model = Model::new();
    let mut store = fx.open();
    model.assert_matches(&store, "start");
    for (i, op) in ops.iter().enumerate() {
        let want = model.apply(op);
        let got: Result<Vec<String>, &'static str> = match op {
            Op::Reopen => {
                drop(store);
                store = fx.open();
                Ok(vec![])
            }
            Op::Create((r, t), tgt) => {
                let target = match tgt {
                    Tgt::Digest(d) => Target::Digest(dg(*d as u8)),
                    Tgt::Tag(r, t) => Target::Tag {
                        repo: REPOS[*r].into(),
                        tag: TAGS[*t].into(),
                    },
                };
                store
                    .create_tag(REPOS[*r], TAGS[*t].as_bytes(), &target)
                    .map(|_| vec![])
                    .map_err(|e| kind(&e))
            }
            Op::Remove((r, t)) => store
                .remove_tag(REPOS[*r], TAGS[*t])
                .map(|v| collected_rels(&v))
                .map_err(|e| kind(&e)),
            Op::Rename((fr, ft), (tr, tt), mode) => store
                .rename_tag(
                    (REPOS[*fr], TAGS[*ft]),
                    REPOS[*tr],
                    TAGS[*tt].as_bytes(),
                    *mode,
                )
                .map(|v| collected_rels(&v))
                .map_err(|e| kind(&e)),
        };
        let ctx = format!("op {i} {op:?}");
        assert_eq!(got, want, "{ctx}: result");
        model.assert_matches(&store, &ctx);
    }
    let before = model.assert_matches(&store, "end");
    drop(store);
    let store = fx.open();
    let after = model.assert_matches(&store, "reopened");
    assert_eq!(after, before, "reopened index");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn random_tag_changes_match_the_model(ops in prop::collection::vec(op_strategy(false), 1..40)) {
        run_ops(&ops);
    }

    #[test]
    fn random_tag_changes_with_reopens_match_the_model(ops in prop::collection::vec(op_strategy(true), 1..40)) {
        run_ops(&ops);
    }
}

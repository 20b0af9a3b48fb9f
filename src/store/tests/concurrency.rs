//! Concurrency: threads racing on one store keep its invariants.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::fixture::*;
use crate::store::layout::REPOSITORIES;
use crate::store::{RenameMode, Target};

/// Rounds of ~250 ms; each round adds fresh digests (so GC keeps having work: collected
/// digests cannot be tagged again), opens the store, lets threads race on it, then checks.
#[test]
fn concurrent_changes_keep_the_invariants() {
    const PER_ROUND: u8 = 12;
    const THREADS: u64 = 6;
    let fx = Fx::new();
    let repos = ["a", "b/c", "l", "docker.io/library/x"];
    let tags = ["t0", "t1", "t2", "t3", "t4"];
    for r in repos {
        fx.mkdirs(&format!("{REPOSITORIES}/{r}"));
    }
    let free = |r: &str, t: &str| {
        !fx.has(&format!("{REPOSITORIES}/{r}/{t}")) && !fx.has(&format!("{r}/{t}"))
    };
    let ever: Arc<Vec<AtomicBool>> = Arc::new((0..256).map(|_| AtomicBool::new(false)).collect());
    // Of each round's digests: 0..6 content ready, 6 pending, 7 never tagged at the start,
    // 8 and 9 legacy in `l`, 10 and 11 do not exist.
    let exists = |i: u8| i % PER_ROUND < 10;
    let pending = |i: u8| i % PER_ROUND == 6;
    let start = Instant::now();
    let (mut total, mut ok, mut rounds) = (0u64, 0u64, 0u8);
    while rounds < 20 && (rounds < 2 || start.elapsed() < Duration::from_secs(2)) {
        let base = rounds * PER_ROUND;
        for i in 0..6 {
            fx.content(base + i, "ready");
        }
        fx.content(base + 6, "pending").content(base + 7, "ready");
        fx.legacy("l", base + 8, "ready")
            .legacy("l", base + 9, "ready");
        let seed = |r: &str, t: &str, d: u8, legacy: bool| {
            if free(r, t) {
                if legacy {
                    fx.ltag(r, t, d);
                } else {
                    fx.ctag(r, t, d);
                }
                ever[d as usize].store(true, Ordering::SeqCst);
            }
        };
        for k in 0..12u8 {
            seed(
                repos[(k % 4) as usize],
                tags[(k / 4) as usize],
                base + k % 6,
                false,
            );
        }
        seed("a", "t4", base + 6, false);
        seed("l", "t3", base + 8, true);
        seed("l", "t4", base + 9, true);
        let store = Arc::new(fx.open());
        check(&store);
        let deadline = Instant::now() + Duration::from_millis(250);
        let threads: Vec<_> = (0..THREADS)
            .map(|id| {
                let store = Arc::clone(&store);
                let ever = Arc::clone(&ever);
                std::thread::spawn(move || {
                    let mut x = 0x9e37_79b9_7f4a_7c15u64
                        ^ (id + 1 + u64::from(base) * 64).wrapping_mul(0x2545_f491_4f6c_dd1d);
                    let mut rnd = move |n: usize| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (x % n as u64) as usize
                    };
                    let mut n = (0u64, 0u64);
                    while Instant::now() < deadline {
                        let r = repos[rnd(repos.len())];
                        let t = tags[rnd(tags.len())];
                        let res = match rnd(10) {
                            0..=3 => {
                                let target = if rnd(3) == 0 {
                                    Target::Digest(dg(base + rnd(11) as u8))
                                } else {
                                    Target::Tag {
                                        repo: repos[rnd(repos.len())].into(),
                                        tag: tags[rnd(tags.len())].into(),
                                    }
                                };
                                let res = store.create_tag(r, t.as_bytes(), &target);
                                if let Ok(d) = &res
                                    && let Some(i) = (0..=255u8).find(|&i| dg(i) == *d)
                                {
                                    ever[i as usize].store(true, Ordering::SeqCst);
                                }
                                kinds(&res)
                            }
                            4..=5 => kinds(&store.remove_tag(r, t)),
                            _ => {
                                let mode = [
                                    RenameMode::Replace,
                                    RenameMode::NoReplace,
                                    RenameMode::Exchange,
                                ][rnd(3)];
                                let to = (repos[rnd(repos.len())], tags[rnd(tags.len())]);
                                kinds(&store.rename_tag((r, t), to.0, to.1.as_bytes(), mode))
                            }
                        };
                        assert!(
                            matches!(res, Ok(()) | Err("NotFound" | "Exists" | "NotReady")),
                            "unexpected {res:?}"
                        );
                        n.0 += 1;
                        n.1 += u64::from(res.is_ok());
                    }
                    n
                })
            })
            .collect();
        for t in threads {
            let n = t.join().expect("thread");
            total += n.0;
            ok += n.1;
        }
        let store = Arc::try_unwrap(store).unwrap_or_else(|_| panic!("store still shared"));
        let s = check(&store);
        for i in (0..base + PER_ROUND).filter(|&i| exists(i)) {
            let d = dg(i);
            let referenced = s.tags.values().any(|(_, x)| *x == d);
            let present = s.dirs.keys().any(|k| k.ends_with(&d.hex()));
            let want = referenced || !ever[i as usize].load(Ordering::SeqCst) || pending(i);
            assert_eq!(present, want, "round {rounds}, digest {i}: {s:?}");
        }
        check_reopen(&fx, store);
        rounds += 1;
    }
    eprintln!("{rounds} rounds, {total} operations, {ok} succeeded");
    assert!(ok >= 50, "only {ok} of {total} operations succeeded");
}

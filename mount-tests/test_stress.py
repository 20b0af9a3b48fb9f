"""Concurrency stress (DESIGN.md section 4): 8 processes doing random ln -s / rm / mv over 20 tags in 3
repositories and 5 digests for IMAGEFS_STRESS_SECONDS (default 20), then the store's invariants on disk."""

from __future__ import annotations

import json
import os

import pytest

from stressworld import StressWorld, mount_consistency, start_workers

SECONDS = float(os.environ.get("IMAGEFS_STRESS_SECONDS", "20"))
ROUND = float(os.environ.get("IMAGEFS_STRESS_ROUND_SECONDS", "1"))
WORKERS = int(os.environ.get("IMAGEFS_STRESS_WORKERS", "8"))


@pytest.mark.slow
def test_concurrent_tagging_stress(store, mounter, workdir):
    """Random ops run in rounds of ROUND seconds (5 digests die fast once their last tag goes: between
    rounds the store is unmounted, checked, and the collected digests re-added with a fresh tag)."""
    w = StressWorld(store)
    mnt = workdir / "mnt"
    mnt.mkdir()
    rounds = max(1, round(SECONDS / ROUND))
    counts, collected = {}, 0
    for rnd in range(rounds):
        m = mounter(store, mnt)
        procs = start_workers(m.mnt, w.spec(), WORKERS, ROUND, rnd + 1, workdir)
        results, crashed = [], []
        for p, out in procs:
            try:
                p.wait(timeout=ROUND + 60)
            except Exception:  # noqa: BLE001
                p.kill()
                p.wait()
                crashed.append(f"worker {out.name} hung (a FUSE request never answered?)")
                continue
            if p.returncode != 0 or not out.exists():
                crashed.append(f"worker {out.name} rc={p.returncode}: {p.stderr.read().decode()[-500:]}")
            else:
                results.append(json.loads(out.read_text()))
        assert not crashed, f"round {rnd}:\n" + "\n".join(crashed)
        for r in results:
            for k, v in r["counts"].items():
                counts[k] = counts.get(k, 0) + v
        unexpected = [u for r in results for u in r["unexpected"]]
        assert not unexpected, f"round {rnd}: {sum(r['n_unexpected'] for r in results)} unexpected errors, " \
            "e.g.:\n" + "\n".join(unexpected[:20])
        # the mount agrees with the store while still mounted
        v = mount_consistency(m.mnt, store.root)
        assert not v, f"round {rnd}:\n" + "\n".join(v)
        rc = m.stop()
        assert rc == 0, f"round {rnd}: daemon exit code {rc}"
        log = m.log_text()
        assert "panicked" not in log, m.log_tail(40)
        collected += log.count("collected ")
        v = w.violations()
        assert not v, f"round {rnd}: store invariants violated after the stress:\n" + "\n".join(v)
        w.replenish()
    print(f"rounds={rounds} digests collected={collected} operation counts:", json.dumps(counts, sort_keys=True))
    assert counts.get("symlink:ok", 0) > 50 and counts.get("unlink:ok", 0) > 10, counts
    assert collected >= 1, "the stress should have collected digests"


def test_gc_races_tag_creation(store, mounter):
    """The race of hypeman's first eager-GC patch: `rm` of a digest's last tag racing `ln -s` of a new tag
    to the same digest. Either the new tag wins (and the digest stays) or GC wins (and ln -s says ENOENT);
    never a tag pointing at a removed digest."""
    import errno
    import random
    import threading
    import time
    from helpers import check_invariants, scan_store
    n = int(os.environ.get("IMAGEFS_RACE_ITERATIONS", "60"))
    hexes = store.add_tagged("race", "docker.io/library/race", n, tag_prefix="x")
    m = mounter(store)
    repo = m.mnt / "tags/docker.io/library/race"
    outcomes, problems = {}, []
    for i, hx in enumerate(hexes):
        barrier = threading.Barrier(2)
        res = {}

        jitter = random.Random(i).uniform(0, 0.004)

        def rm():
            barrier.wait()
            if i % 3 == 1:
                time.sleep(jitter)
            try:
                os.unlink(repo / f"x{i}")
                res["rm"] = "ok"
            except OSError as e:
                res["rm"] = errno.errorcode[e.errno]

        def ln():
            barrier.wait()
            if i % 3 == 2:
                time.sleep(jitter)
            try:
                os.symlink(hx if i % 2 else f"x{i}", repo / f"y{i}")   # by digest, or through the dying tag
                res["ln"] = "ok"
            except OSError as e:
                res["ln"] = errno.errorcode[e.errno]

        ts = [threading.Thread(target=rm), threading.Thread(target=ln)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        key = f"rm:{res.get('rm')} ln:{res.get('ln')}"
        outcomes[key] = outcomes.get(key, 0) + 1
        in_store = store.content_dir(hx).is_dir()
        if res.get("rm") != "ok" or res.get("ln") not in ("ok", "ENOENT"):
            problems.append(f"{i}: unexpected {key}")
        elif res["ln"] == "ok":
            if not in_store or not os.path.isdir(repo / f"y{i}"):
                problems.append(f"{i}: new tag y{i} created but digest gone (in store: {in_store})")
        elif in_store:
            problems.append(f"{i}: ln -s said ENOENT but the digest is still in the store untagged")
    print("race outcomes:", outcomes)
    assert not problems, "\n".join(problems[:20])
    m.stop()
    v = check_invariants(store.root, ever_tagged=set(hexes))
    assert not v, v
    assert len(scan_store(store.root).tags) == outcomes.get("rm:ok ln:ok", 0)


@pytest.mark.slow
def test_repository_renames_race_tag_ops(store, mounter):
    """Tag ops in repositories while another thread renames those repository directories back and forth
    and makes/removes empty ones: no unexpected errno, and the store is consistent afterwards."""
    import errno
    import random
    import threading
    import time
    from helpers import check_invariants
    from stressworld import mount_consistency
    seconds = min(SECONDS, 5.0)
    hexes = [store.add_digest(f"rr-{i}") for i in range(4)]
    anchor = store.add_digest("rr-anchor")
    store.tag("keep/anchor", "v", anchor)
    # Under a registry host: new tags go only under names hypeman uses (rr.io/a, not rr/a).
    for i, hx in enumerate(hexes):
        store.tag("rr.io/a", f"t{i}", hx)
        store.tag("rr.io/b", f"t{i}", hx)
    m = mounter(store)
    base = m.mnt / "tags/rr.io"
    stop = time.monotonic() + seconds
    unexpected, counts = [], {}
    ok_tag = {errno.ENOENT, errno.EEXIST}
    ok_dir = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY}

    def note(k):
        counts[k] = counts.get(k, 0) + 1

    def tagger(seed):
        rnd = random.Random(seed)
        while time.monotonic() < stop:
            repo = rnd.choice(["a", "b", "c"])
            t = base / repo / f"t{rnd.randrange(6)}"
            try:
                if rnd.random() < 0.5:
                    os.symlink(rnd.choice(hexes), t)
                    note("symlink")
                elif rnd.random() < 0.5:
                    os.unlink(t)
                    note("unlink")
                else:
                    os.rename(t, base / rnd.choice(["a", "b", "c"]) / f"t{rnd.randrange(6)}")
                    note("rename")
            except OSError as e:
                if e.errno not in ok_tag:
                    unexpected.append(f"tag op on {t}: {e}")

    def renamer(seed):
        rnd = random.Random(seed)
        while time.monotonic() < stop:
            a, b = rnd.sample(["a", "b", "c", "d"], 2)
            try:
                k = rnd.random()
                if k < 0.6:
                    os.rename(base / a, base / b)
                    note("dir-rename")
                elif k < 0.8:
                    os.mkdir(base / a)
                    note("mkdir")
                else:
                    os.rmdir(base / a)
                    note("rmdir")
            except OSError as e:
                if e.errno not in ok_dir:
                    unexpected.append(f"dir op {a}->{b}: {e}")

    threads = [threading.Thread(target=tagger, args=(i,)) for i in range(6)] + \
        [threading.Thread(target=renamer, args=(100 + i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    print("counts:", counts)
    assert not unexpected, "\n".join(unexpected[:20])
    v = mount_consistency(m.mnt, store.root)
    assert not v, "\n".join(v)
    assert m.stop() == 0
    v = check_invariants(store.root, ever_tagged=set(hexes) | {anchor})
    assert not v, "\n".join(v)
    assert counts.get("dir-rename", 0) > 10 and counts.get("symlink", 0) > 10, counts

"""A random tag workload through the mount: ln -s / rm / mv (rename, RENAME_NOREPLACE, RENAME_EXCHANGE).

usage: workload.py MNT SPEC_JSON SECONDS SEED OUT_JSON [--crash]

SPEC_JSON: {"tags": [[repo, tag], ...], "digests": [hex, ...], "not_ready": [hex, ...]}
Writes {"counts": {...}, "unexpected": [...], "created": [hex, ...]} to OUT_JSON.
With --crash, errors that mean "the daemon died" (ENOTCONN, ECONNABORTED) end the run quietly.
"""

import ctypes
import errno
import json
import os
import random
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]


def renameat2(a, b, flags):
    if libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


EXPECTED = {
    "symlink": {errno.EEXIST, errno.ENOENT, errno.EAGAIN},
    "unlink": {errno.ENOENT},
    "rename": {errno.ENOENT},
    "noreplace": {errno.ENOENT, errno.EEXIST},
    "exchange": {errno.ENOENT},
}
DEAD = {errno.ENOTCONN, errno.ECONNABORTED}


def main():
    mnt, spec, seconds, seed, out = sys.argv[1:6]
    crash = "--crash" in sys.argv
    spec = json.loads(spec)
    rnd = random.Random(int(seed))
    tags = [os.path.join(mnt, "tags", r, t) for r, t in spec["tags"]]
    digests = spec["digests"] + spec.get("not_ready", [])
    counts, unexpected, created = {}, [], set()
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        op = rnd.choices(["symlink", "unlink", "rename", "noreplace", "exchange"], [50, 15, 20, 8, 7])[0]
        a, b = rnd.choice(tags), rnd.choice(tags)
        try:
            if op == "symlink":
                k = rnd.random()
                if k < 0.5:
                    hx = rnd.choice(digests)
                    tgt = hx
                elif k < 0.65:
                    hx = rnd.choice(digests)
                    tgt = "sha256:" + hx
                elif k < 0.8:
                    hx = rnd.choice(digests)
                    tgt = os.path.join(mnt, "digests", hx)
                else:
                    hx = None
                    tgt = os.path.relpath(b, os.path.dirname(a)) if k < 0.9 else b
                os.symlink(tgt, a)
                if hx:
                    created.add(hx)
            elif op == "unlink":
                os.unlink(a)
            elif op == "rename":
                os.rename(a, b)
            elif op == "noreplace":
                renameat2(a, b, 1)
            else:
                renameat2(a, b, 2)
            counts[op + ":ok"] = counts.get(op + ":ok", 0) + 1
        except OSError as e:
            if crash and e.errno in DEAD:
                break
            key = f"{op}:{errno.errorcode.get(e.errno, e.errno)}"
            counts[key] = counts.get(key, 0) + 1
            if e.errno not in EXPECTED[op] and not (op == "exchange" and a == b and e.errno == errno.EINVAL):
                unexpected.append(f"{op} {a} {b}: {e}")
        if crash:
            # flush progress often: the parent kills us at a random moment
            pass
    with open(out, "w") as f:
        json.dump({"counts": counts, "unexpected": unexpected[:50], "n_unexpected": len(unexpected),
                   "created": sorted(created)}, f)


if __name__ == "__main__":
    main()

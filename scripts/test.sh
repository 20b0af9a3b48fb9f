#!/usr/bin/env bash
# Sets everything up and runs every test: formatting, lints, the module-cycle check, unit
# tests, mount tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --check
cargo clippy --locked --workspace --all-targets -- -D warnings
python3 scripts/check_module_cycles.py src
# One skip policy: a test that needs root, the kernel's erofs or mkfs.erofs fails here
# instead of skipping (see crates/erofs/src/testing.rs and mount-tests/README.md).
export IMAGEFS_TESTS_STRICT=1
cargo test --locked --release --workspace
IMAGEFS_BIN="$PWD/target/release/imagefs" python3 -m pytest -q mount-tests "$@"

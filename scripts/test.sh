#!/usr/bin/env bash
# Sets everything up and runs every test: formatting, lints, unit tests, mount tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
# The image reader's kernel-differential tests must not skip in CI.
IMAGEFS_TESTS_STRICT=1 cargo test --locked --release --workspace
IMAGEFS_BIN="$PWD/target/release/imagefs" python3 -m pytest -q mount-tests "$@"

#!/usr/bin/env bash
# Sets everything up and runs every test: formatting, lints, unit tests, mount tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --release
IMAGEFS_BIN="$PWD/target/release/imagefs" python3 -m pytest -q mount-tests "$@"

#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: installs what is missing, checks formatting and
# lints, then runs every unit, integration and multi-process test. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

echo "== format" >&2
cargo fmt --all -- --check
echo "== lints" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests" >&2
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi

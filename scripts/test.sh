#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: installs what is missing, checks formatting and
# lints, then runs every unit, integration and multi-process test. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# shellcheck disable=SC1091
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

# nextest runs each test in a process of its own, which tests that enter network namespaces
# rely on; `cargo test` runs them as threads of one process and cannot run this suite.
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "test.sh: cargo-nextest is missing and install-deps.sh could not install it;" \
        "install it with \`cargo install --locked cargo-nextest\`" >&2
    exit 1
fi

echo "== format" >&2
cargo fmt --all -- --check
echo "== lints" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests" >&2
cargo nextest run --workspace --locked --no-fail-fast

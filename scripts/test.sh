#!/usr/bin/env bash
# Runs every test of the project, on a fresh machine as on a developer's:
#   1. formatting and lints (cargo fmt --check, clippy -D warnings);
#   2. unit and integration tests (cargo test: real `herald` processes on loopback addresses;
#      cluster tests run several nodes, each on its own 127.x.y.z; installs `nftables` with
#      apt-get when `nft` is missing, for the partition test);
#   3. the SDK conformance suites (tests/sdk/run.sh: npm `centrifuge`, PyPI `centrifuge-python`
#      and `cent`, installed into tests/sdk/js/node_modules and tests/sdk/python/.venv), with
#      the demo page's browser test (headless Debian `chromium`, installed with apt-get when
#      missing, driven by npm `playwright-core`; screenshots in target/test-artifacts/);
#   4. every fuzz target for 20 seconds (scripts/fuzz.sh; installs cargo-fuzz if missing).
# Needs: the Rust toolchain, node >= 20 with npm, python3 >= 3.9. Network: crates.io, npm, PyPI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n\033[1m== %s\033[0m  (%s free on disk)\n' "$*" "$(df -h --output=avail . | tail -1 | tr -d ' ')"; }

# A one-off build gains nothing from incremental compilation, which would keep several GB of
# per-target caches on disk; set CARGO_INCREMENTAL=1 to keep them between runs.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets -- -D warnings

step "cargo test"
# Debian packages the tests need: nftables for the cluster partition test (tests/partition.rs
# cuts links between loopback addresses with rules of its own), chromium for the demo page's
# browser test.
missing=()
command -v nft >/dev/null 2>&1 || missing+=(nftables)
[[ -x ${CHROMIUM_PATH:-/usr/bin/chromium} ]] || missing+=(chromium)
if ((${#missing[@]} > 0)); then
    sudo_if_needed=()
    if [[ $(id -u) != 0 ]]; then sudo_if_needed=(sudo); fi
    "${sudo_if_needed[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_if_needed[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The cluster's rolling-restart test (tests/rolling.rs) follows channels with the npm SDK.
tests/sdk/run.sh install js
cargo test --all-targets

step "SDK conformance suites"
HERALD_BIN="$PWD/target/debug/herald" tests/sdk/run.sh

step "fuzz targets, 20 s each"
FUZZ_DEV=1 FUZZ_CODEGEN_UNITS=16 scripts/fuzz.sh 20

step "done"
du -sh target fuzz/target 2>/dev/null || true

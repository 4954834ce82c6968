#!/usr/bin/env bash
# Soak test: SOAK_JOBS jobs (default 300) through two gateways while workers are killed (-9)
# and restarted at random, for at most SOAK_SECONDS (default 120). Prints accepted, completed,
# failed with reasons, lost (must be 0) and duplicated endings (must be 0).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --test soak -- --ignored --nocapture

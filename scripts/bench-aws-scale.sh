#!/usr/bin/env bash
# The AWS path at scale, on moto with the binary's Lambda roles (tests/aws_scale.rs at full
# size), and the DynamoDB cost per item; prints the figures the README reports:
#  1. a POST of 100,000 IDs at batch size 10 (10,000 chunks): the time to the answer, and to
#     the stream's first starts;
#  2. every one of those 10,000 chunks run to exact counts within the default limit;
#  3. a 1,000,000-line S3 object submitted by one SubmitBatch at batch size 100: the time to
#     the answer, every chunk run to exact counts, and the init function's peak RSS;
#  4. write units per item at batch size 100, slot accounting included.
# Steps 2 and 3 each run 10,000 chunk executions through moto and take tens of minutes: moto,
# not batch-manager, sets the pace. Sizes: SCALE_POST_ITEMS, SCALE_RUN_ITEMS,
# SCALE_OBJECT_LINES. moto comes from scripts/test.sh, which installs it into .tools/venv.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
export PATH="$root/.tools/venv/bin:$PATH"
export SCALE_POST_ITEMS=${SCALE_POST_ITEMS:-100000}
export SCALE_RUN_ITEMS=${SCALE_RUN_ITEMS:-100000}
export SCALE_OBJECT_LINES=${SCALE_OBJECT_LINES:-1000000}
export SCALE_RUN_DEADLINE_SECS=${SCALE_RUN_DEADLINE_SECS:-7200}

run() {
  echo "== $1"
  cargo test --test aws_scale "$2" -- --exact --nocapture 2>&1 \
    | grep -E '^(POST of|  [0-9]+ of|[0-9]+ IDs|S3 object|test )' || true
}

run "POST of $SCALE_POST_ITEMS IDs" a_large_post_is_answered_once_stored_and_the_stream_starts_its_first_chunks
run "$SCALE_RUN_ITEMS IDs run to the end" every_chunk_of_a_posted_batch_completes_within_the_default_limit
run "S3 object of $SCALE_OBJECT_LINES lines" an_s3_object_submitted_by_one_request_runs_to_exact_counts_with_init_memory_flat

echo "== DynamoDB cost"
cargo test --test dynamo_cost -- --nocapture 2>&1 | grep -E '^(DynamoDB|  )' || true

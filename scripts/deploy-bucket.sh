#!/usr/bin/env bash
# Deploys the artifact bucket stack (cf-templates/s3-stack.yaml) that the
# application stacks of this account and region deploy from. Safe to re-run.
#
# usage: scripts/deploy-bucket.sh STACK_NAME
#
# Uses the AWS CLI's usual credentials and region (AWS_PROFILE, AWS_REGION, ...).
set -euo pipefail

usage() {
  echo "usage: $(basename "$0") STACK_NAME" >&2
  exit 2
}

[[ $# -eq 1 && -n "$1" && "$1" != -* ]] || usage
stack_name="$1"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

command -v aws >/dev/null 2>&1 || { echo "aws CLI not found on PATH" >&2; exit 1; }

aws cloudformation deploy \
  --stack-name "$stack_name" \
  --template-file "$repo_root/cf-templates/s3-stack.yaml" \
  --no-fail-on-empty-changeset

bucket="$(aws cloudformation describe-stacks \
  --stack-name "$stack_name" \
  --query "Stacks[0].Outputs[?OutputKey=='ArtifactBucketName'].OutputValue" \
  --output text)"

echo "artifact bucket: $bucket"

#!/usr/bin/env bash
# Builds batch-manager as one Lambda zip and deploys it.
#
#   deploy.sh stack BUCKET_STACK APP_STACK [--standard | --express] [--no-build] [--param KEY=VALUE]...
#       Uploads the zip and cf-templates/state-machine.asl.json to the bucket of
#       BUCKET_STACK and creates or updates APP_STACK from
#       cf-templates/batch-processing-stack.yaml, then prints its outputs.
#       --standard / --express set WorkflowType; without either, a new stack gets
#       EXPRESS and an existing one keeps its type. --param passes any other
#       template parameter, e.g. --param ApiAuthorizationType=NONE; parameters not
#       given keep their current value on an existing stack.
#
#   deploy.sh code BUCKET_STACK APP_STACK [--no-build]
#       Uploads the zip and points all four functions of APP_STACK at it,
#       without a CloudFormation update.
#
# --no-build deploys the existing target/lambda/batch-manager/bootstrap.zip.
# Uses the AWS CLI's usual credentials and region (AWS_PROFILE, AWS_REGION, ...).
set -euo pipefail

usage() {
  cat >&2 <<EOF
usage: $(basename "$0") stack BUCKET_STACK APP_STACK [--standard | --express] [--no-build] [--param KEY=VALUE]...
       $(basename "$0") code  BUCKET_STACK APP_STACK [--no-build]
EOF
  exit 2
}

die() {
  echo "error: $*" >&2
  exit 1
}

[[ $# -ge 3 ]] || usage
mode="$1"
bucket_stack="$2"
app_stack="$3"
shift 3
[[ "$mode" == stack || "$mode" == code ]] || usage
[[ -n "$bucket_stack" && "$bucket_stack" != -* ]] || usage
[[ -n "$app_stack" && "$app_stack" != -* ]] || usage

# Function names are APP_STACK-update and the like, and Lambda allows 64 characters.
[[ ${#app_stack} -le 57 ]] || die "APP_STACK must be at most 57 characters"

build=true
workflow_type=""
extra_params=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-build)
      build=false
      ;;
    --standard | --express)
      [[ "$mode" == stack ]] || usage
      [[ -z "$workflow_type" ]] || usage
      workflow_type="$(tr '[:lower:]' '[:upper:]' <<<"${1#--}")"
      ;;
    --param)
      [[ "$mode" == stack && $# -ge 2 && "$2" == ?*=* ]] || usage
      extra_params+=("$2")
      shift
      ;;
    *)
      usage
      ;;
  esac
  shift
done

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
template="$repo_root/cf-templates/batch-processing-stack.yaml"
definition="$repo_root/cf-templates/state-machine.asl.json"
zip_path="$repo_root/target/lambda/batch-manager/bootstrap.zip"
key_prefix="batch-manager"

command -v aws >/dev/null 2>&1 || die "aws CLI not found on PATH"

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

# Prints one output of a stack, or nothing when the stack has no such output.
stack_output() {
  local value
  value="$(aws cloudformation describe-stacks \
    --stack-name "$1" \
    --query "Stacks[0].Outputs[?OutputKey=='$2'].OutputValue | [0]" \
    --output text)"
  [[ "$value" == None ]] || printf '%s\n' "$value"
}

stack_parameter() {
  local value
  value="$(aws cloudformation describe-stacks \
    --stack-name "$1" \
    --query "Stacks[0].Parameters[?ParameterKey=='$2'].ParameterValue | [0]" \
    --output text)"
  [[ "$value" == None ]] || printf '%s\n' "$value"
}

# Uploads a file under a content-addressed key unless that key already exists;
# a new key per content is what makes CloudFormation see a change.
upload() {
  local file="$1" key="$2"
  shift 2
  if aws s3api head-object --bucket "$bucket" --key "$key" >/dev/null 2>&1; then
    echo "s3://$bucket/$key already uploaded"
  else
    aws s3 cp "$file" "s3://$bucket/$key" --only-show-errors "$@"
    echo "uploaded s3://$bucket/$key"
  fi
}

bucket="$(stack_output "$bucket_stack" ArtifactBucketName)"
[[ -n "$bucket" ]] || die "stack $bucket_stack has no ArtifactBucketName output; deploy it with scripts/deploy-bucket.sh"

if [[ "$build" == true ]]; then
  cargo lambda --version >/dev/null 2>&1 || die "cargo lambda not found; install cargo-lambda or pass --no-build"
  echo "building the Lambda zip"
  (cd "$repo_root" && cargo lambda build --release --arm64 --no-default-features --output-format zip)
fi
[[ -f "$zip_path" ]] || die "$zip_path not found; build it with: cargo lambda build --release --arm64 --no-default-features --output-format zip"

artifact_key="$key_prefix/$(sha256_of "$zip_path").zip"
upload "$zip_path" "$artifact_key"

definition_key="$key_prefix/state-machine/$(sha256_of "$definition").asl.json"

case "$mode" in
  stack)
    upload "$definition" "$definition_key" --content-type application/json

    params=(
      "ArtifactBucket=$bucket"
      "ArtifactKey=$artifact_key"
      "DefinitionKey=$definition_key"
    )
    [[ -z "$workflow_type" ]] || params+=("WorkflowType=$workflow_type")
    # The +-expansion keeps an empty array safe under set -u in bash before 4.4.
    params+=(${extra_params[@]+"${extra_params[@]}"})

    aws cloudformation deploy \
      --stack-name "$app_stack" \
      --template-file "$template" \
      --parameter-overrides "${params[@]}" \
      --capabilities CAPABILITY_IAM \
      --no-fail-on-empty-changeset

    aws cloudformation describe-stacks \
      --stack-name "$app_stack" \
      --query "Stacks[0].Outputs[].[OutputKey, OutputValue]" \
      --output table
    ;;

  code)
    functions=()
    for output in InitFunctionName Task1FunctionName Task2FunctionName UpdateFunctionName; do
      name="$(stack_output "$app_stack" "$output")"
      [[ -n "$name" ]] || die "stack $app_stack has no $output output; deploy it with: $(basename "$0") stack"
      functions+=("$name")
    done

    for name in "${functions[@]}"; do
      echo "updating $name"
      aws lambda update-function-code \
        --function-name "$name" \
        --s3-bucket "$bucket" \
        --s3-key "$artifact_key" \
        --output text --query FunctionArn >/dev/null
    done
    for name in "${functions[@]}"; do
      aws lambda wait function-updated --function-name "$name"
      echo "$name now runs s3://$bucket/$artifact_key"
    done

    deployed_definition_key="$(stack_parameter "$app_stack" DefinitionKey)"
    if [[ "$deployed_definition_key" != "$definition_key" ]]; then
      echo "warning: state-machine.asl.json differs from the deployed definition; run '$(basename "$0") stack' to deploy it" >&2
    fi
    echo "note: the stack's ArtifactKey still names the previous zip until the next '$(basename "$0") stack'" >&2
    ;;

  *)
    usage
    ;;
esac

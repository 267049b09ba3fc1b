#!/usr/bin/env bash
# Deploys infra/aws/template.yaml with `aws cloudformation deploy`, then prints
# the environment lines plugind needs to run with PLATFORM=serverless against
# the stack (bucket, prefix, region, plugin role, function prefix).
#
# Progress goes to stderr and the settings to stdout, so
#   infra/aws/deploy.sh --storage-prefix plugind/ >> .env
# appends them to an env file. Credentials, region and endpoint come from the
# usual AWS CLI configuration (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL, …).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TEMPLATE="$HERE/template.yaml"

STACK_NAME="plugind"
REGION=""
FUNCTION_PREFIX="plugind-"
BUCKET_NAME=""
STORAGE_PREFIX=""
DAEMON_PRINCIPAL=""
ENV_FILE=""
OUTPUTS_ONLY=""

usage() {
  cat <<USAGE
Usage: $0 [options]

  --stack-name NAME         CloudFormation stack name (default: plugind)
  --region REGION           AWS region (default: the AWS CLI's)
  --function-prefix PREFIX  PLUGIN_LAMBDA_FUNCTION_PREFIX (default: plugind-)
  --bucket-name NAME        bucket name (default: chosen by CloudFormation)
  --storage-prefix PREFIX   PLUGIN_STORAGE_S3_PREFIX, ending in "/" (default: none)
  --daemon-principal ARN    IAM principal allowed to assume the daemon role
                            (default: no role; attach the daemon policy yourself)
  --env-file FILE           also write the settings to FILE (replaced)
  --outputs-only            do not deploy; print the settings of an existing stack
  -h, --help                this help
USAGE
}

log() { printf 'deploy: %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 2
}

# Options take their value as the next word.
need_value() {
  [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --stack-name) need_value "$@"; STACK_NAME="$2"; shift 2 ;;
    --region) need_value "$@"; REGION="$2"; shift 2 ;;
    --function-prefix) need_value "$@"; FUNCTION_PREFIX="$2"; shift 2 ;;
    --bucket-name) need_value "$@"; BUCKET_NAME="$2"; shift 2 ;;
    --storage-prefix) need_value "$@"; STORAGE_PREFIX="$2"; shift 2 ;;
    --daemon-principal) need_value "$@"; DAEMON_PRINCIPAL="$2"; shift 2 ;;
    --env-file) need_value "$@"; ENV_FILE="$2"; shift 2 ;;
    --outputs-only) OUTPUTS_ONLY=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

if [[ -n "$STORAGE_PREFIX" && "$STORAGE_PREFIX" != */ ]]; then
  die "--storage-prefix must end in \"/\" (got \"$STORAGE_PREFIX\")"
fi
command -v aws >/dev/null 2>&1 || die "the AWS CLI (aws) is not on PATH"

AWS=(aws)
if [[ -n "$REGION" ]]; then
  AWS+=(--region "$REGION")
fi

if [[ -z "$OUTPUTS_ONLY" ]]; then
  log "deploying stack $STACK_NAME"
  "${AWS[@]}" cloudformation deploy \
    --template-file "$TEMPLATE" \
    --stack-name "$STACK_NAME" \
    --capabilities CAPABILITY_IAM \
    --no-fail-on-empty-changeset \
    --parameter-overrides \
    "FunctionPrefix=$FUNCTION_PREFIX" \
    "BucketName=$BUCKET_NAME" \
    "StoragePrefix=$STORAGE_PREFIX" \
    "DaemonPrincipal=$DAEMON_PRINCIPAL" >&2
fi

log "reading the outputs of $STACK_NAME"
OUTPUTS="$("${AWS[@]}" cloudformation describe-stacks \
  --stack-name "$STACK_NAME" \
  --query 'Stacks[0].Outputs[].[OutputKey,OutputValue]' \
  --output text)"

# Stack output name -> plugind setting. Outputs that are not settings are
# printed as comments for the operator.
lines=(
  "PLATFORM=serverless"
  "PLUGIN_STORAGE_TYPE=aws_s3"
  # Buckets made by the template have DNS-safe names: virtual-hosted style.
  "S3_USE_PATH_STYLE=false"
)
seen_bucket=""
while IFS=$'\t' read -r key value; do
  [[ -n "$key" ]] || continue
  case "$key" in
    PluginStorageOssBucket) lines+=("PLUGIN_STORAGE_OSS_BUCKET=$value"); seen_bucket=1 ;;
    PluginStorageS3Prefix) lines+=("PLUGIN_STORAGE_S3_PREFIX=$value") ;;
    AwsRegion) lines+=("AWS_REGION=$value") ;;
    PluginLambdaRoleArn) lines+=("PLUGIN_LAMBDA_ROLE_ARN=$value") ;;
    PluginLambdaFunctionPrefix) lines+=("PLUGIN_LAMBDA_FUNCTION_PREFIX=$value") ;;
    DaemonPolicyArn) lines+=("# attach to the identity running plugind: $value") ;;
    DaemonRoleArn) lines+=("# role for plugind to assume: $value") ;;
    *) log "ignoring unknown stack output $key" ;;
  esac
done <<<"$OUTPUTS"
[[ -n "$seen_bucket" ]] || die "stack $STACK_NAME has no PluginStorageOssBucket output"

lines+=(
  "# Still to set: PLUGIN_SERVERLESS_CALLBACK_URL (the daemon's URL as Lambda"
  "# reaches it), SERVER_KEY, and PLUGIN_LAMBDA_ARCH if not x86_64."
)

printf '%s\n' "${lines[@]}"
if [[ -n "$ENV_FILE" ]]; then
  printf '%s\n' "${lines[@]}" >"$ENV_FILE"
  log "wrote $ENV_FILE"
fi

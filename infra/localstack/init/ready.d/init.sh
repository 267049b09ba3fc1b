#!/usr/bin/env bash
# LocalStack READY hook: creates what infra/aws/template.yaml creates on AWS,
# so plugind can run with PLATFORM=serverless against LocalStack:
#   - the plugin bucket (versioned, SSE-S3 encrypted, public access blocked);
#   - the plugin execution role (trusted by Lambda, logs only).
# Idempotent: a second run (LocalStack restarted with persistence) leaves
# existing resources as they are.
#
# Inside the LocalStack container it uses `awslocal`; elsewhere it uses `aws`
# with the caller's AWS_ENDPOINT_URL and credentials.
set -euo pipefail

BUCKET="${PLUGIND_BUCKET:-plugind}"
FUNCTION_PREFIX="${PLUGIND_FUNCTION_PREFIX:-plugind-}"
ROLE_NAME="${PLUGIND_ROLE_NAME:-plugind-plugin-role}"
REGION="${AWS_DEFAULT_REGION:-${AWS_REGION:-us-east-1}}"

if command -v awslocal >/dev/null 2>&1; then
  AWS=(awslocal --region "$REGION")
else
  AWS=(aws --region "$REGION")
fi

log() { printf 'plugind-init: %s\n' "$*" >&2; }

if "${AWS[@]}" s3api head-bucket --bucket "$BUCKET" >/dev/null 2>&1; then
  log "bucket $BUCKET exists"
else
  log "creating bucket $BUCKET in $REGION"
  if [[ "$REGION" == "us-east-1" ]]; then
    "${AWS[@]}" s3api create-bucket --bucket "$BUCKET" >/dev/null
  else
    # Every region but us-east-1 must be named in the request.
    "${AWS[@]}" s3api create-bucket --bucket "$BUCKET" \
      --create-bucket-configuration "LocationConstraint=$REGION" >/dev/null
  fi
fi
"${AWS[@]}" s3api put-bucket-versioning --bucket "$BUCKET" \
  --versioning-configuration Status=Enabled
"${AWS[@]}" s3api put-bucket-encryption --bucket "$BUCKET" \
  --server-side-encryption-configuration \
  '{"Rules":[{"ApplyServerSideEncryptionByDefault":{"SSEAlgorithm":"AES256"}}]}'
"${AWS[@]}" s3api put-public-access-block --bucket "$BUCKET" \
  --public-access-block-configuration \
  BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true

TRUST_POLICY='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}'
if "${AWS[@]}" iam get-role --role-name "$ROLE_NAME" >/dev/null 2>&1; then
  log "role $ROLE_NAME exists"
else
  log "creating role $ROLE_NAME"
  "${AWS[@]}" iam create-role --role-name "$ROLE_NAME" \
    --description "Execution role of plugind plugin functions (logs only)." \
    --assume-role-policy-document "$TRUST_POLICY" >/dev/null
fi

ACCOUNT="$("${AWS[@]}" sts get-caller-identity --query Account --output text)"
LOG_GROUP="arn:aws:logs:$REGION:$ACCOUNT:log-group:/aws/lambda/$FUNCTION_PREFIX*"
LOGS_POLICY="$(printf '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"logs:CreateLogGroup","Resource":"%s"},{"Effect":"Allow","Action":["logs:CreateLogStream","logs:PutLogEvents"],"Resource":"%s:log-stream:*"}]}' "$LOG_GROUP" "$LOG_GROUP")"
"${AWS[@]}" iam put-role-policy --role-name "$ROLE_NAME" \
  --policy-name plugin-logs --policy-document "$LOGS_POLICY"

ROLE_ARN="$("${AWS[@]}" iam get-role --role-name "$ROLE_NAME" --query Role.Arn --output text)"
log "ready: PLUGIN_STORAGE_OSS_BUCKET=$BUCKET PLUGIN_LAMBDA_ROLE_ARN=$ROLE_ARN"

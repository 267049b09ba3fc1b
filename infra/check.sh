#!/usr/bin/env bash
# Checks infra/ without AWS and without Docker:
#  1. cfn-lint on infra/aws/template.yaml (any error, warning or note fails);
#  2. `bash -n` on every shell script of scripts/ and infra/;
#  3. the LocalStack compose file parses and mounts the init hooks;
#  4. against a moto server: the template creates its stack, deploy.sh turns
#     the stack outputs into plugind settings, and the LocalStack init script
#     creates the bucket and role (twice, to show it is idempotent).
# Needs the tools venv: TOOLS_PYTHON from scripts/setup-python.sh's env file.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
: "${TOOLS_PYTHON:?run scripts/setup-python.sh and source its env file first}"
# cfn-lint and aws live beside the venv's python.
PATH="$(dirname "$TOOLS_PYTHON"):$PATH"
export PATH

say() { printf 'infra-check: %s\n' "$*" >&2; }
fail() {
  say "FAIL: $*"
  exit 1
}
expect_eq() { # what, expected, actual
  [[ "$2" == "$3" ]] || fail "$1: expected \"$2\", got \"$3\""
}

say "cfn-lint infra/aws/template.yaml"
cfn-lint --include-checks I -- infra/aws/template.yaml

say "bucket safeguards in the template"
# cfn-lint checks that the template is valid, not that the bucket stays
# private, encrypted, versioned and TLS-only: that is checked here.
"$TOOLS_PYTHON" - infra/aws/template.yaml <<'PY'
import sys

from cfnlint.decode import cfn_yaml

template = cfn_yaml.load(sys.argv[1])
resources = template["Resources"]
bucket = resources["PluginBucket"]["Properties"]
problems = []
if bucket.get("VersioningConfiguration", {}).get("Status") != "Enabled":
    problems.append("versioning is not enabled")
block = bucket.get("PublicAccessBlockConfiguration", {})
for flag in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"):
    if block.get(flag) is not True:
        problems.append(f"{flag} is not true")
rules = bucket.get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration", [])
if not rules or rules[0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"] not in ("AES256", "aws:kms"):
    problems.append("default encryption is not set")
policy = next(
    (r["Properties"]["PolicyDocument"] for r in resources.values()
     if r["Type"] == "AWS::S3::BucketPolicy"
     and r["Properties"]["Bucket"] == {"Ref": "PluginBucket"}),
    None,
)
tls_only = policy is not None and any(
    s["Effect"] == "Deny"
    and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
    for s in policy["Statement"]
)
if not tls_only:
    problems.append("no bucket policy denies requests without TLS")
if problems:
    sys.exit("PluginBucket: " + "; ".join(problems))
PY

say "bash -n on shell scripts"
while IFS= read -r -d '' script; do
  bash -n "$script" || fail "syntax error in $script"
done < <(find scripts infra -name '*.sh' -type f -print0)
for script in infra/aws/deploy.sh infra/localstack/init/ready.d/init.sh infra/check.sh; do
  [[ -x "$script" ]] || fail "$script is not executable"
done

say "infra/localstack/docker-compose.yml"
"$TOOLS_PYTHON" - infra/localstack/docker-compose.yml <<'PY'
import pathlib
import sys

import yaml

path = pathlib.Path(sys.argv[1])
doc = yaml.safe_load(path.read_text())
service = doc["services"]["localstack"]
services = set(service["environment"]["SERVICES"].split(","))
missing = {"s3", "lambda", "iam", "sts"} - services
if missing:
    sys.exit(f"SERVICES lacks {sorted(missing)}")
mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
hooks = mounts.get("/etc/localstack/init/ready.d")
if hooks is None:
    sys.exit("the READY init hooks are not mounted")
if not (path.parent / hooks / "init.sh").is_file():
    sys.exit(f"{hooks}/init.sh does not exist")
PY

say "moto server"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/plugind-infra.XXXXXX")"
MOTO_PID=""
cleanup() {
  if [[ -n "$MOTO_PID" ]]; then
    kill "$MOTO_PID" 2>/dev/null || true
    wait "$MOTO_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
PORT="$("$TOOLS_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
"$TOOLS_PYTHON" -m moto.server -H 127.0.0.1 -p "$PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=eu-west-1
unset AWS_PROFILE AWS_REGION AWS_SESSION_TOKEN
export AWS_CONFIG_FILE="$WORK/aws-config" AWS_SHARED_CREDENTIALS_FILE="$WORK/aws-credentials"
for _ in $(seq 1 100); do
  aws sts get-caller-identity >/dev/null 2>&1 && break
  kill -0 "$MOTO_PID" 2>/dev/null || { cat "$WORK/moto.log" >&2; fail "moto server exited"; }
  sleep 0.2
done
ACCOUNT="$(aws sts get-caller-identity --query Account --output text)"

say "stack from infra/aws/template.yaml"
# moto leaves the outputs of change-set deployments (what `cloudformation
# deploy` uses) empty, so the stack is made with create-stack and deploy.sh
# reads it with --outputs-only.
aws cloudformation create-stack --stack-name plugind-check \
  --template-body file://infra/aws/template.yaml --capabilities CAPABILITY_IAM \
  --parameters ParameterKey=FunctionPrefix,ParameterValue=pd- \
  ParameterKey=StoragePrefix,ParameterValue=plugind/ \
  "ParameterKey=DaemonPrincipal,ParameterValue=arn:aws:iam::$ACCOUNT:root" >/dev/null
# `cloudformation wait` polls every 30 s; moto finishes at once.
for _ in $(seq 1 50); do
  STATUS="$(aws cloudformation describe-stacks --stack-name plugind-check \
    --query 'Stacks[0].StackStatus' --output text)"
  [[ "$STATUS" == *_IN_PROGRESS ]] || break
  sleep 0.2
done
expect_eq "stack status" CREATE_COMPLETE "$STATUS"

infra/aws/deploy.sh --stack-name plugind-check --outputs-only \
  --env-file "$WORK/plugind.env" >"$WORK/stdout.env"
cmp -s "$WORK/plugind.env" "$WORK/stdout.env" || fail "--env-file differs from stdout"
setting() { sed -n "s/^$1=//p" "$WORK/plugind.env"; }
BUCKET="$(setting PLUGIN_STORAGE_OSS_BUCKET)"
ROLE_ARN="$(setting PLUGIN_LAMBDA_ROLE_ARN)"
[[ -n "$BUCKET" ]] || fail "no PLUGIN_STORAGE_OSS_BUCKET line"
expect_eq PLATFORM serverless "$(setting PLATFORM)"
expect_eq PLUGIN_STORAGE_TYPE aws_s3 "$(setting PLUGIN_STORAGE_TYPE)"
expect_eq PLUGIN_STORAGE_S3_PREFIX plugind/ "$(setting PLUGIN_STORAGE_S3_PREFIX)"
expect_eq PLUGIN_LAMBDA_FUNCTION_PREFIX pd- "$(setting PLUGIN_LAMBDA_FUNCTION_PREFIX)"
expect_eq AWS_REGION eu-west-1 "$(setting AWS_REGION)"
# moto's CloudFormation applies a bucket's encryption but not its versioning,
# public access block or policy; the template check above covers those.
expect_eq "bucket encryption" AES256 \
  "$(aws s3api get-bucket-encryption --bucket "$BUCKET" \
    --query 'ServerSideEncryptionConfiguration.Rules[0].ApplyServerSideEncryptionByDefault.SSEAlgorithm' --output text)"
ROLE_NAME="${ROLE_ARN##*/}"
expect_eq "plugin role trust" lambda.amazonaws.com \
  "$(aws iam get-role --role-name "$ROLE_NAME" \
    --query 'Role.AssumeRolePolicyDocument.Statement[0].Principal.Service' --output text)"

# The daemon policy's resources, with every substitution resolved.
POLICY_ARN="$(sed -n 's/^# attach to the identity running plugind: //p' "$WORK/plugind.env")"
[[ -n "$POLICY_ARN" ]] || fail "no daemon policy line"
VERSION="$(aws iam get-policy --policy-arn "$POLICY_ARN" --query Policy.DefaultVersionId --output text)"
aws iam get-policy-version --policy-arn "$POLICY_ARN" --version-id "$VERSION" \
  --query PolicyVersion.Document --output json >"$WORK/policy.json"
"$TOOLS_PYTHON" - "$WORK/policy.json" "$BUCKET" "$ROLE_ARN" "$ACCOUNT" <<'PY'
import json
import sys
import urllib.parse

path, bucket, role_arn, account = sys.argv[1:]
raw = open(path).read()
doc = json.loads(raw)
# Some servers hand the document back URL-encoded, as IAM itself does.
if isinstance(doc, str):
    doc = json.loads(urllib.parse.unquote(doc))
by_sid = {s["Sid"]: s for s in doc["Statement"]}
want = {
    "ListOwnPrefix": f"arn:aws:s3:::{bucket}",
    "ReadWriteOwnObjects": f"arn:aws:s3:::{bucket}/plugind/*",
    "ManageOwnFunctions": f"arn:aws:lambda:eu-west-1:{account}:function:pd-*",
    "PassPluginRoleToLambda": role_arn,
}
for sid, resource in want.items():
    got = by_sid[sid]["Resource"]
    if got != resource:
        sys.exit(f"{sid}: resource {got!r}, expected {resource!r}")
if by_sid["ListOwnPrefix"]["Condition"] != {"StringLike": {"s3:prefix": "plugind/*"}}:
    sys.exit(f"ListOwnPrefix condition: {by_sid['ListOwnPrefix']['Condition']!r}")
if "lambda:InvokeFunction" not in by_sid["ManageOwnFunctions"]["Action"]:
    sys.exit("the daemon cannot invoke its functions")
PY

say "deploy.sh refuses a storage prefix without a trailing slash"
if infra/aws/deploy.sh --storage-prefix plugind --outputs-only >/dev/null 2>&1; then
  fail "deploy.sh accepted --storage-prefix plugind"
fi

say "infra/localstack/init/ready.d/init.sh"
for run in first second; do
  PLUGIND_BUCKET=plugind-local PLUGIND_ROLE_NAME=plugind-local-role \
    infra/localstack/init/ready.d/init.sh 2>"$WORK/init-$run.log" ||
    { cat "$WORK/init-$run.log" >&2; fail "init.sh failed on its $run run"; }
done
expect_eq "init bucket versioning" Enabled \
  "$(aws s3api get-bucket-versioning --bucket plugind-local --query Status --output text)"
expect_eq "init bucket region" eu-west-1 \
  "$(aws s3api get-bucket-location --bucket plugind-local --query LocationConstraint --output text)"
expect_eq "init role trust" lambda.amazonaws.com \
  "$(aws iam get-role --role-name plugind-local-role \
    --query 'Role.AssumeRolePolicyDocument.Statement[0].Principal.Service' --output text)"
expect_eq "init role log policy" "arn:aws:logs:eu-west-1:$ACCOUNT:log-group:/aws/lambda/plugind-*" \
  "$(aws iam get-role-policy --role-name plugind-local-role --policy-name plugin-logs \
    --query 'PolicyDocument.Statement[0].Resource' --output text)"

say "all infra checks passed"

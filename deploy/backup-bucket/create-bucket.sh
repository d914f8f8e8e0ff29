#!/usr/bin/env bash
# Creates the backup bucket with Object Lock, its lifecycle rules and bucket policy, and the IAM
# identities that use it (README.md beside this file says why each piece is what it is).
#
#   ACCOUNT_ID=123456789012 OIDC_PROVIDER=oidc.eks.eu-west-3.amazonaws.com/id/ABCDEF... \
#     bash deploy/backup-bucket/create-bucket.sh
#
# Run it as the break-glass role twinme-backup-admin (MFA): once the bucket policy is on, only that
# role may change the bucket, bypass a GOVERNANCE lock or put a legal hold. Optional: BUCKET
# (twinme-backups), REGION (eu-west-3), LOCK_MODE (GOVERNANCE or COMPLIANCE), LOCK_DAYS (30: at
# least retention's keep_days), DRY_RUN=1 (print the aws commands and the rendered files only).
# Object Lock can be turned on for an existing bucket too (put-object-lock-configuration), but
# the objects already there stay unlocked: start with a new bucket.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
: "${ACCOUNT_ID:?set ACCOUNT_ID, the AWS account id}"
: "${OIDC_PROVIDER:?set OIDC_PROVIDER, the EKS cluster OIDC issuer without https:// (aws eks describe-cluster --query cluster.identity.oidc.issuer)}"
BUCKET="${BUCKET:-twinme-backups}"
REGION="${REGION:-eu-west-3}"
LOCK_MODE="${LOCK_MODE:-GOVERNANCE}"
LOCK_DAYS="${LOCK_DAYS:-30}"
case "$LOCK_MODE" in GOVERNANCE | COMPLIANCE) ;; *)
  echo "LOCK_MODE=$LOCK_MODE: use GOVERNANCE or COMPLIANCE" >&2
  exit 2
  ;;
esac
[[ "$LOCK_DAYS" =~ ^[1-9][0-9]*$ ]] || {
  echo "LOCK_DAYS=$LOCK_DAYS: a whole number of days, at least retention's keep_days (30)" >&2
  exit 2
}

aws() {
  if [ "${DRY_RUN:-}" = 1 ]; then echo "aws $*"; else command aws "$@"; fi
}

# The files name the placeholders of the documentation: account 111122223333, bucket
# twinme-backups, the EKS OIDC provider EXAMPLED539...; rendered copies name the real ones.
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for f in "$here"/*.json; do
  sed -e "s/111122223333/$ACCOUNT_ID/g" \
    -e "s/arn:aws:s3:::twinme-backups/arn:aws:s3:::$BUCKET/g" \
    -e "s#oidc.eks.eu-west-3.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE#$OIDC_PROVIDER#g" \
    -e "s/\"Mode\": \"GOVERNANCE\"/\"Mode\": \"$LOCK_MODE\"/" \
    -e "s/\"Days\": 30/\"Days\": $LOCK_DAYS/" \
    "$f" >"$out/$(basename "$f")"
done

# 1. The bucket: Object Lock from birth (it turns versioning on, for good), default retention,
#    encryption at rest, no public access, lifecycle rules.
aws s3api create-bucket --bucket "$BUCKET" --region "$REGION" \
  --create-bucket-configuration "LocationConstraint=$REGION" --object-lock-enabled-for-bucket
aws s3api put-object-lock-configuration --bucket "$BUCKET" \
  --object-lock-configuration "file://$out/object-lock.json"
aws s3api put-bucket-encryption --bucket "$BUCKET" --server-side-encryption-configuration \
  '{"Rules":[{"ApplyServerSideEncryptionByDefault":{"SSEAlgorithm":"AES256"},"BucketKeyEnabled":true}]}'
aws s3api put-public-access-block --bucket "$BUCKET" --public-access-block-configuration \
  BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true
aws s3api put-bucket-lifecycle-configuration --bucket "$BUCKET" \
  --lifecycle-configuration "file://$out/lifecycle.json"

# 2. The identities. Writers: IAM users whose keys go into the Secrets twinme-ops-aws (dagster)
#    and twinme-db-backup-s3 (twinme-postgres); create their access keys yourself. Retention: a
#    role only the ServiceAccount twinme-ops-retention can assume (retention-serviceaccount.yaml).
for user in twinme-ops-writer twinme-db-backup-writer; do
  aws iam get-user --user-name "$user" >/dev/null 2>&1 || aws iam create-user --user-name "$user"
done
aws iam put-user-policy --user-name twinme-ops-writer --policy-name twinme-backups-writer \
  --policy-document "file://$out/writer-policy.json"
aws iam put-user-policy --user-name twinme-db-backup-writer --policy-name twinme-backups-wal \
  --policy-document "file://$out/cnpg-writer-policy.json"
aws iam get-role --role-name twinme-backup-retention >/dev/null 2>&1 ||
  aws iam create-role --role-name twinme-backup-retention \
    --assume-role-policy-document "file://$out/retention-trust-policy.json"
aws iam put-role-policy --role-name twinme-backup-retention --policy-name twinme-backups-retention \
  --policy-document "file://$out/retention-policy.json"

# 3. Last, the bucket policy: from now on only twinme-backup-admin changes the bucket.
aws s3api put-bucket-policy --bucket "$BUCKET" --policy "file://$out/bucket-policy.json"

echo "bucket s3://$BUCKET: Object Lock $LOCK_MODE $LOCK_DAYS days"
echo "retention role: arn:aws:iam::$ACCOUNT_ID:role/twinme-backup-retention"
echo "next: access keys for twinme-ops-writer and twinme-db-backup-writer into their Secrets,"
echo "      kubectl apply -f deploy/backup-bucket/retention-serviceaccount.yaml (account id set)"

#!/usr/bin/env bash
# The two instance profiles ray_cluster.yaml names, created once per AWS account (idempotent; needs IAM rights):
#   mf-ray-head   the head: launches and stops the workers (Ray's default head policy, AmazonEC2FullAccess), passes
#                 the worker role to them (iam:PassRole, pass-worker-role.json) and reads/writes s3:// (the driver)
#   mf-ray-worker the GPU workers: read and write s3:// (prepare, edit and stitch run there)
# s3-access.json grants the bucket mf-data (the one the examples use): edit it for yours first.
#   AWS_PROFILE=... infra/aws/create-iam.sh
set -euo pipefail
cd "$(dirname "$0")"

role() {  # role NAME: the role with EC2's trust policy, and an instance profile of the same name holding it
  local name=$1
  aws iam get-role --role-name "$name" >/dev/null 2>&1 \
    || aws iam create-role --role-name "$name" --assume-role-policy-document file://ec2-trust.json >/dev/null
  aws iam get-instance-profile --instance-profile-name "$name" >/dev/null 2>&1 \
    || aws iam create-instance-profile --instance-profile-name "$name" >/dev/null
  if ! aws iam get-instance-profile --instance-profile-name "$name" \
      --query "InstanceProfile.Roles[?RoleName=='$name'] | length(@)" --output text | grep -qx 1; then
    aws iam add-role-to-instance-profile --instance-profile-name "$name" --role-name "$name"
  fi
}

role mf-ray-worker
aws iam put-role-policy --role-name mf-ray-worker --policy-name mf-s3 --policy-document file://s3-access.json

role mf-ray-head
aws iam attach-role-policy --role-name mf-ray-head --policy-arn arn:aws:iam::aws:policy/AmazonEC2FullAccess
aws iam put-role-policy --role-name mf-ray-head --policy-name mf-s3 --policy-document file://s3-access.json
aws iam put-role-policy --role-name mf-ray-head --policy-name mf-pass-worker-role \
  --policy-document file://pass-worker-role.json
echo "instance profiles mf-ray-head and mf-ray-worker are ready (IAM takes a few seconds to propagate)"

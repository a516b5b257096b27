#!/usr/bin/env bash
# Worker node of a launcher cluster (deploy/clusters/aws.yaml): join with token auth.
# Extra arguments (the head's address) go to ray start.
set -euo pipefail
export RAY_AUTH_MODE=token
exec ray start --metrics-export-port=8080 "$@"

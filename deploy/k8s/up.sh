#!/usr/bin/env bash
# `make cluster-up CLUSTER=k8s`: the replay store's password Secret (generated once, never
# committed), Valkey, then the RayCluster, in kubectl's current context and namespace.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
if ! kubectl get secret amago-redis >/dev/null 2>&1; then
    kubectl create secret generic amago-redis \
        --from-literal=password="$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
fi
kubectl apply -f "$HERE/redis.yaml"
kubectl rollout status deployment/amago-redis --timeout=300s
kubectl apply -f "$HERE/raycluster.yaml"
echo "submit: kubectl apply -f $HERE/rayjob.yaml   (or port-forward 8265 and ray job submit)"

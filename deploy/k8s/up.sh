#!/usr/bin/env bash
# `make cluster-up CLUSTER=k8s`: the replay store's password Secret (generated once, never
# committed), Valkey, then the RayCluster, in kubectl's current context and namespace.
#
# The Secret `amago-redis` holds the password twice: `password` (the Ray pods'
# AMAGO_REDIS_PASSWORD) and `valkey-auth.conf` (`requirepass <password>`, which Valkey
# includes from a mounted file). Both go to kubectl as files in a private temporary folder,
# never on a command line; a Secret made by an older up.sh (no valkey-auth.conf) is completed
# with its existing password.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
umask 077
SECRET_DIR="$(mktemp -d)"
trap 'rm -rf "$SECRET_DIR"' EXIT

write_secret_files() {  # password on stdin (or "" = a new one) -> the two key files
    python3 -c '
import pathlib, secrets, sys
out = pathlib.Path(sys.argv[1])
pw = sys.stdin.read().strip() or secrets.token_urlsafe(32)
(out / "password").write_text(pw)
(out / "valkey-auth.conf").write_text(f"requirepass {pw}\n")
' "$SECRET_DIR"
}

if ! kubectl get secret amago-redis >/dev/null 2>&1; then
    write_secret_files </dev/null
    kubectl create secret generic amago-redis \
        --from-file=password="$SECRET_DIR/password" \
        --from-file=valkey-auth.conf="$SECRET_DIR/valkey-auth.conf"
elif [ -z "$(kubectl get secret amago-redis -o jsonpath='{.data.valkey-auth\.conf}')" ]; then
    kubectl get secret amago-redis -o jsonpath='{.data.password}' | base64 -d | write_secret_files
    kubectl create secret generic amago-redis --dry-run=client -o yaml \
        --from-file=password="$SECRET_DIR/password" \
        --from-file=valkey-auth.conf="$SECRET_DIR/valkey-auth.conf" | kubectl apply -f -
fi
rm -rf "${SECRET_DIR:?}"/*
kubectl apply -f "$HERE/redis.yaml"
kubectl rollout status deployment/amago-redis --timeout=300s
kubectl apply -f "$HERE/raycluster.yaml"
echo "submit: kubectl apply -f $HERE/rayjob.yaml   (or port-forward 8265 and ray job submit)"

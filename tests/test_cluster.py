"""Cluster deployment.

- slow: `python -m deploy.ops.cluster up` (what `make cluster-up` runs) brings up a head and a
  worker node, Valkey and Prometheus on 127.0.0.1 (free ports, a temporary state folder); a
  second `up` changes nothing; the documented `source env.sh && ray job submit ...` trains a
  tiny T-Maze run whose trajectories went through the cluster's Redis, whose rollout actors
  ran on both nodes and which Prometheus scraped; `down` leaves no process behind (the
  fixture also brings the cluster down when a test fails).
- offline: the cloud launcher YAML against Ray's own schema, the KubeRay / Kubernetes
  manifests against a small schema and their cross-references, cluster.yaml composition.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import redis
import yaml

from common.config_utils import ConfigError
from common.net import free_port
from deploy.config import compose, prepare, resolve_environment
from deploy.ops.cluster import ClusterConfig, State, _live_group_members, port_free
from deploy.ops.local_cluster import LocalRayConfig
from deploy.ops.prometheus import PrometheusClient, PrometheusUnavailable, ensure_prometheus
from deploy.tools.metrics_png import SMOKE_OVERRIDES
from replay_service.lua import Keys
from replay_service.stats import read_stats

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"


# -- the local cluster (slow) -------------------------------------------------------------------
@dataclass
class LocalCluster:
    state: State
    ports: dict[str, int]
    args: list[str]

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard']}"


def _cli(command: str, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deploy.ops.cluster", command, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _shell(script: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        ensure_prometheus()
    except PrometheusUnavailable as e:  # (an install that fails still fails the tests)
        pytest.skip(f"the cluster tests need Prometheus, not available on this platform: {e}")
    ports = {name: free_port() for name in ("gcs", "dashboard", "redis", "prometheus")}
    state = State(tmp_path_factory.mktemp("cluster"))
    args = [
        "--state-dir",
        str(state.root),
        "--gcs-port",
        str(ports["gcs"]),
        "--dashboard-port",
        str(ports["dashboard"]),
        "--redis-port",
        str(ports["redis"]),
        "--prometheus-port",
        str(ports["prometheus"]),
        "--scrape-interval-s",
        "1",
    ]
    try:
        up = _cli("up", args)
        assert up.returncode == 0, up.stdout + up.stderr
        yield LocalCluster(state, ports, args)
    finally:
        down = _cli("down", args)
        if state.ray_link.is_symlink():  # Ray's temp dir outside the state folder
            shutil.rmtree(state.ray_temp_dir(), ignore_errors=True)
        assert down.returncode == 0, down.stdout + down.stderr


def _listening(pids: list[int]) -> set[tuple[ipaddress._BaseAddress, int]]:
    """(address, port) of every listening TCP socket the processes ``pids`` hold."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A" or f[9] not in inodes:  # 0A = LISTEN
                continue
            host, port = f[1].split(":")
            raw = bytes.fromhex(host)
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            out.add((ipaddress.ip_address(raw), int(port, 16)))
    return out


@pytest.mark.slow
def test_cluster_up_starts_everything_on_loopback(cluster):
    st = cluster.state
    pids = [
        p
        for f in (st.ray_pid, st.redis_pid, st.prom_pid)
        for p in _live_group_members(int(f.read_text()))
    ]
    sockets = _listening(pids)
    assert {port for _, port in sockets} >= set(cluster.ports.values())
    exposed = [
        (str(a), port)
        for a, port in sockets
        if not (
            a.is_loopback
            or getattr(a, "ipv4_mapped", None) is not None
            and a.ipv4_mapped.is_loopback
        )
    ]
    assert not exposed, f"listening beyond loopback: {exposed}"
    info = json.loads(cluster.state.ray_ready.read_text())
    assert len(info["nodes"]) == 2 and sum(n["head"] for n in info["nodes"]) == 1
    assert {n["address"] for n in info["nodes"]} == {"127.0.0.1"}
    for name, port in cluster.ports.items():
        assert not port_free(port), f"{name} is not listening on 127.0.0.1:{port}"
    assert (cluster.state.password.stat().st_mode & 0o077) == 0  # owner-only
    password = cluster.state.password.read_text().strip()
    assert password not in cluster.state.env_sh.read_text()
    with pytest.raises(redis.exceptions.AuthenticationError):  # a password is required
        redis.Redis(port=cluster.ports["redis"]).ping()
    assert "RAY_AUTH_MODE=token" in cluster.state.env_sh.read_text()


@pytest.mark.slow
def test_cluster_up_twice_is_a_no_op(cluster):
    pids = [
        p.read_text()
        for p in (cluster.state.ray_pid, cluster.state.redis_pid, cluster.state.prom_pid)
    ]
    again = _cli("up", cluster.args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already up") == 3, again.stdout
    assert pids == [
        p.read_text()
        for p in (cluster.state.ray_pid, cluster.state.redis_pid, cluster.state.prom_pid)
    ]


@pytest.mark.slow
def test_submitted_job_trains_through_the_cluster_redis(cluster):
    namespace, job_id = "cluster-test", "amago-cluster-test"
    overrides = " ".join(
        shlex.quote(o)
        for o in [*SMOKE_OVERRIDES, "run.name=clustertest", f"replay.redis.namespace={namespace}"]
    )
    env_sh = shlex.quote(str(cluster.state.env_sh))
    submit = _shell(
        f"source {env_sh} && ray job submit --address {cluster.dashboard} --working-dir . "
        f"--submission-id {job_id} -- python -m deploy.train deploy=cluster {overrides}"
    )
    assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]
    status = _shell(f"source {env_sh} && ray job status --address {cluster.dashboard} {job_id}")
    assert "succeeded" in (status.stdout + status.stderr).lower(), status.stdout + status.stderr

    # Its trajectories went through the cluster's Redis, in the run's namespace.
    client = redis.Redis(
        port=cluster.ports["redis"], password=cluster.state.password.read_text().strip()
    )
    stats = read_stats(client, Keys(namespace))
    assert stats.inserted_trajectories > 0 and stats.sampled_timesteps > 0

    # The run directory landed in the state folder; its scrape-target file is gone again.
    (summary_file,) = cluster.state.runs.glob("clustertest/*/summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary["updates"] >= 200
    assert list(cluster.state.targets.iterdir()) == []

    # The rollout actors were spread over both nodes.
    actors = _shell(
        f"source {env_sh} && ray list actors --address 127.0.0.1:"
        f"{cluster.ports['gcs']} --detail --format json --limit 1000"
    )
    assert actors.returncode == 0, actors.stderr
    rollout = [a for a in json.loads(actors.stdout) if a["class_name"] == "RolloutActor"]
    assert len(rollout) == 3  # two collecting, one evaluating: the only job on this cluster
    assert len({a["node_id"] for a in rollout}) == 2, rollout

    # Prometheus scraped the job's processes (and Ray's metrics agents).
    prom = PrometheusClient(f"http://127.0.0.1:{cluster.ports['prometheus']}")
    updates = prom.query('max(max_over_time(amago_learner_updates_total{run="clustertest"}[15m]))')
    assert updates and float(updates[0]["value"][1]) > 0
    assert prom.query('up{job="ray"} == 1')


@pytest.mark.slow
def test_cluster_down_leaves_nothing_running(cluster):
    down = _cli("down", cluster.args)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped" in down.stdout
    for name, port in cluster.ports.items():
        assert port_free(port), f"{name} still listens on {port}"
    again = _cli("down", cluster.args)
    assert again.returncode == 0 and again.stdout.count("not running") == 3


# -- offline checks ----------------------------------------------------------------------------
def test_cluster_config_validation():
    ClusterConfig().validate()
    with pytest.raises(ConfigError) as e:
        ClusterConfig(redis_port=LocalRayConfig().gcs_port).validate()
    assert e.value.field == "redis_port"
    with pytest.raises(ConfigError) as e:
        LocalRayConfig(temp_dir="/tmp/" + "x" * 60).validate()
    assert e.value.field == "temp_dir"
    with pytest.raises(ConfigError) as e:
        LocalRayConfig(worker_nodes=0).validate()
    assert e.value.field == "worker_nodes"


def test_cluster_starts_and_stops_k_valkey_shards_and_exports_them(tmp_path, monkeypatch):
    """`make cluster-up REDIS_SHARDS=3` (Valkey part: Ray not started here): three servers on
    consecutive ports with one password, the nodes' AMAGO_REDIS_SHARDS naming shards 1 and 2,
    read by deploy=cluster into replay.redis.shards; `down` without --redis-shards stops all."""
    from deploy.ops.cluster import down, node_environment, redis_up, status

    base = free_port()
    while not all(port_free(base + k) for k in range(3)):
        base = free_port()
    cfg = ClusterConfig(state_dir=str(tmp_path / "state"), redis_port=base, redis_shards=3)
    cfg.validate()
    st = State(cfg.state_dir)
    st.root.mkdir(parents=True)
    try:
        out = redis_up(cfg, st)
        assert out.count("started") == 3, out
        assert redis_up(cfg, st).count("already up") == 3  # a second up changes nothing
        pw = st.password.read_text().strip()
        for k in range(3):
            assert redis.Redis(port=base + k, password=pw).ping()
            assert "requirepass" in st.shard(k)[3].read_text()
        env = node_environment(cfg, st)
        urls = [f"redis://127.0.0.1:{base + k}" for k in range(3)]
        assert env["AMAGO_REDIS_URL"] == urls[0]
        assert env["AMAGO_REDIS_SHARDS"] == ",".join(urls[1:])
        for key in ("AMAGO_REDIS_URL", "AMAGO_REDIS_SHARDS", "AMAGO_REDIS_PASSWORD"):
            monkeypatch.setenv(key, env[key])
        run = resolve_environment(compose(["deploy=cluster", "run.name=x"]))
        assert run.replay.redis.urls == urls and run.replay.num_shards == 3
        assert status(ClusterConfig(state_dir=cfg.state_dir, redis_port=base)) == 0
    finally:
        assert down(ClusterConfig(state_dir=cfg.state_dir, redis_port=base)) == 0
    assert all(port_free(base + k) for k in range(3))
    with pytest.raises(ConfigError) as e:
        ClusterConfig(redis_port=65535, redis_shards=2).validate()
    assert e.value.field == "redis_shards"
    monkeypatch.setenv("AMAGO_REDIS_SHARDS", "http://nope")
    with pytest.raises(ConfigError) as e:  # shards from the environment are checked too
        resolve_environment(compose(["deploy=cluster", "run.name=x"]))
    assert e.value.field == "replay.redis.shards[0]"


def test_ray_temp_dir_stays_short(tmp_path):
    deep = State(tmp_path / ("d" * 50) / "cluster")
    assert len(str(deep.ray_temp_dir())) <= 40
    assert State("/s").ray_temp_dir() == Path("/s/ray")


def test_committed_valkey_config_is_safe():
    conf = (DEPLOY / "redis" / "valkey.conf").read_text()
    directives = dict(
        line.split(None, 1)
        for line in conf.splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert directives["bind"].split() == ["127.0.0.1"]
    assert directives["maxmemory-policy"] == "noeviction" and "maxmemory" in directives
    assert "requirepass" not in directives  # the password is generated, never committed


def test_cluster_preset_reads_the_environment(monkeypatch):
    from omegaconf import OmegaConf

    monkeypatch.setenv("AMAGO_REDIS_URL", "redis://10.0.0.5:6389")
    monkeypatch.setenv("AMAGO_REDIS_PASSWORD", "pw-from-the-node")
    monkeypatch.setenv("AMAGO_RUNS_DIR", "/data/runs")
    monkeypatch.setenv("AMAGO_METRICS_SD_DIR", "/data/targets")
    dcfg = compose(["deploy=cluster", "run.name=x"], resolved=False)
    cfg, _, _ = prepare(OmegaConf.to_object(dcfg))
    saved = OmegaConf.to_yaml(OmegaConf.structured(cfg))  # what run_training saves
    assert "pw-from-the-node" not in saved
    cfg = resolve_environment(cfg)
    cfg.validate()
    d = cfg.deploy
    assert (d.ray_address, d.metrics_host, d.spread_actors) == ("auto", "node", True)
    assert cfg.replay.redis.url == "redis://10.0.0.5:6389"
    assert cfg.replay.redis.password == "pw-from-the-node"
    assert cfg.run.out_dir == "/data/runs" and d.metrics_sd_dir == "/data/targets"
    assert cfg.replay.redis.namespace.startswith("x-")  # one namespace per run
    monkeypatch.delenv("AMAGO_REDIS_URL")
    with pytest.raises(ConfigError) as e:  # no silent embedded Redis on a cluster
        resolve_environment(compose(["deploy=cluster"])).validate()
    assert e.value.field == "replay.redis.url"


def test_launcher_yaml_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((DEPLOY / "clusters" / "aws.yaml").read_text())
    validate_config(prepare_config(cfg))  # what `ray up` checks: Ray's own ray-schema.json
    broken = {
        **cfg,
        "available_node_types": {
            **cfg["available_node_types"],
            "extra": {"node_config": {}, "typo": 1},
        },
    }
    with pytest.raises(jsonschema.ValidationError):  # the check can fail
        validate_config(prepare_config(broken))
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert any("g5" in t["node_config"]["InstanceType"] for t in types.values())  # a GPU node
    starts = " ".join(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])
    for script in re.findall(r"deploy/clusters/\S+\.sh", starts):
        text = (REPO / script).read_text()
        assert "RAY_AUTH_MODE=token" in text
        assert subprocess.run(["bash", "-n", str(REPO / script)]).returncode == 0
    head = (DEPLOY / "clusters" / "head_start.sh").read_text()
    for var in (
        "AMAGO_REDIS_URL",
        "AMAGO_REDIS_PASSWORD",
        "AMAGO_RUNS_DIR",
        "AMAGO_METRICS_SD_DIR",
    ):
        assert f"export {var}=" in head
    assert "--dashboard-host=127.0.0.1" in head and "requirepass" in head


# A small schema of what these manifests must have (KubeRay v1 and core kinds).
_CONTAINER = {
    "type": "object",
    "required": ["name", "image", "resources"],
    "properties": {"resources": {"type": "object", "required": ["requests", "limits"]}},
}
_POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {"containers": {"type": "array", "minItems": 1, "items": _CONTAINER}},
        }
    },
}
_META = {"type": "object", "required": ["name"]}
SCHEMAS = {
    "RayCluster": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "ray.io/v1"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["rayVersion", "headGroupSpec", "workerGroupSpecs"],
                "properties": {
                    "authOptions": {
                        "type": "object",
                        "properties": {"mode": {"const": "token"}},
                        "required": ["mode"],
                    },
                    "headGroupSpec": {
                        "type": "object",
                        "required": ["rayStartParams", "template"],
                        "properties": {"template": _POD_TEMPLATE},
                    },
                    "workerGroupSpecs": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": [
                                "groupName",
                                "replicas",
                                "minReplicas",
                                "maxReplicas",
                                "rayStartParams",
                                "template",
                            ],
                            "properties": {"template": _POD_TEMPLATE},
                        },
                    },
                },
            },
        },
    },
    "RayJob": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "ray.io/v1"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["entrypoint"],
                "oneOf": [{"required": ["clusterSelector"]}, {"required": ["rayClusterSpec"]}],
            },
        },
    },
    "Deployment": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "apps/v1"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["selector", "template"],
                "properties": {"template": _POD_TEMPLATE},
            },
        },
    },
    "Service": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "v1"},
            "metadata": _META,
            "spec": {"type": "object", "required": ["selector", "ports"]},
        },
    },
    "ConfigMap": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "data"],
        "properties": {"apiVersion": {"const": "v1"}, "metadata": _META},
    },
    "NetworkPolicy": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "networking.k8s.io/v1"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["podSelector", "policyTypes", "ingress"],
                "properties": {
                    "podSelector": {"type": "object", "required": ["matchLabels"]},
                    "policyTypes": {"type": "array", "contains": {"const": "Ingress"}},
                    "ingress": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["from", "ports"],
                            "properties": {
                                "from": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {
                                        "type": "object",
                                        "required": ["podSelector"],
                                        "properties": {
                                            "podSelector": {
                                                "type": "object",
                                                "required": ["matchLabels"],
                                                "properties": {"matchLabels": {"minProperties": 1}},
                                            }
                                        },
                                    },
                                },
                                "ports": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {"type": "object", "required": ["port"]},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def _manifests() -> list[dict]:
    docs = []
    for f in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def _walk(node, key: str):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key)


def test_k8s_manifests_match_their_schema():
    docs = _manifests()
    kinds = [d["kind"] for d in docs]
    assert {"RayCluster", "RayJob", "Deployment", "Service", "ConfigMap", "NetworkPolicy"} <= set(
        kinds
    )
    assert "Secret" not in kinds  # the password Secret is generated by up.sh, never committed
    for d in docs:
        jsonschema.validate(d, SCHEMAS[d["kind"]])


def test_k8s_manifests_reference_each_other():
    docs = _manifests()
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    up = (DEPLOY / "k8s" / "up.sh").read_text()
    # Every secretKeyRef and Secret volume names the Secret (and keys) up.sh creates.
    created = _created_secret_keys(up)
    refs = {(r["name"], r["key"]) for d in docs for r in _walk(d, "secretKeyRef")}
    refs |= {
        (v["secretName"], item["key"])
        for d in docs
        for v in _walk(d, "secret")
        for item in v["items"]
    }
    assert refs and refs <= created, (refs, created)
    # Every configMap volume exists; the Redis Service selects the Redis pods.
    for cm in _walk(docs, "configMap"):
        assert ("ConfigMap", cm["name"]) in by
    svc, dep = by[("Service", "amago-redis")], by[("Deployment", "amago-redis")]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port = svc["spec"]["ports"][0]["port"]
    ray = by[("RayCluster", "amago")]
    urls = {e["value"] for e in _walk(ray, "env") for e in e if e["name"] == "AMAGO_REDIS_URL"}
    assert urls == {f"redis://amago-redis:{port}"}
    # Ray token auth, a GPU group for the learner, the job on this cluster in cluster mode.
    assert ray["spec"]["authOptions"]["mode"] == "token"
    gpu = [g for g in ray["spec"]["workerGroupSpecs"] if g["rayStartParams"].get("num-gpus") == "1"]
    assert gpu and all(
        c["resources"]["limits"].get("nvidia.com/gpu") == "1"
        for g in gpu
        for c in g["template"]["spec"]["containers"]
    )
    job = by[("RayJob", "amago-train")]
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == ray["metadata"]["name"]
    assert "deploy.train deploy=cluster" in job["spec"]["entrypoint"]


def _created_secret_keys(up_sh: str) -> set[tuple[str, str]]:
    """(Secret, key) of every ``kubectl create secret generic NAME --from-...=KEY=`` in up.sh
    (continuation lines joined)."""
    out = set()
    for cmd in re.findall(r"create secret generic (?:[^\n\\]|\\\n)*", up_sh):
        name = cmd.split()[3]
        out |= {(name, key) for key in re.findall(r"--from-(?:literal|file)=([\w.-]+)=", cmd)}
    return out


def _valkey_directives(conf: str) -> dict[str, str]:
    return dict(
        line.strip().split(None, 1)
        for line in conf.splitlines()
        if line.strip() and not line.strip().startswith("#")
    )


def test_k8s_redis_keeps_its_password_off_command_lines_and_behind_a_network_policy():
    docs = _manifests()
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    conf = _valkey_directives(by[("ConfigMap", "amago-redis-config")]["data"]["valkey.conf"])
    assert conf["protected-mode"] == "yes" and "requirepass" not in conf
    dep = by[("Deployment", "amago-redis")]
    pod = dep["spec"]["template"]["spec"]
    (valkey,) = pod["containers"]
    # The password reaches Valkey only as a file of the Secret that valkey.conf includes.
    assert not any("pass" in str(a).lower() for a in valkey["command"] + valkey.get("args", []))
    assert "env" not in valkey and "envFrom" not in valkey
    secret_vols = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    mounts = {m["name"]: m["mountPath"] for m in valkey["volumeMounts"]}
    files = {
        f"{mounts[name]}/{item['path']}": item["key"]
        for name, vol in secret_vols.items()
        for item in vol["items"]
    }
    assert files.get(conf["include"]) == "valkey-auth.conf"
    assert all(v["defaultMode"] & 0o007 == 0 for v in secret_vols.values())  # not world-readable
    assert pod["securityContext"]["runAsNonRoot"] is True
    up = (DEPLOY / "k8s" / "up.sh").read_text()
    assert "requirepass" in up and "--from-literal" not in up  # files, not kubectl's argv
    assert "umask 077" in up
    # Only the Ray pods of this RayCluster reach Valkey, on its port.
    policy = by[("NetworkPolicy", "amago-redis")]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    (rule,) = policy["spec"]["ingress"]
    ray = by[("RayCluster", "amago")]
    assert [f["podSelector"]["matchLabels"] for f in rule["from"]] == [
        {"ray.io/cluster": ray["metadata"]["name"]}
    ]
    assert [p["port"] for p in rule["ports"]] == [int(conf["port"])]
    assert {p["containerPort"] for p in valkey["ports"]} == {int(conf["port"])}


def test_k8s_up_script_parses():
    assert subprocess.run(["bash", "-n", str(DEPLOY / "k8s" / "up.sh")]).returncode == 0

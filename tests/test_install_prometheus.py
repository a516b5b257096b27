"""Prometheus where apt may not exist: deploy/install_prometheus.sh tells "cannot be installed
here" (exit 3, a clear message) from "an install failed" (exit 1); ensure_prometheus turns
the first into PrometheusUnavailable (the dashboard and cluster tests skip on it, `make
cluster-up` goes on without Prometheus) and the second into a RuntimeError (they fail). The
platforms are simulated with a PATH of stand-in tools; on this Debian machine the real
Prometheus must be there or installable. Plus deploy/compose.yaml, parsed (no Docker here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import deploy.ops.cluster as cluster
from common.net import free_port
from deploy.ops.prometheus import INSTALL_SCRIPT, PrometheusUnavailable, ensure_prometheus

DEPLOY = INSTALL_SCRIPT.parent
BASH = shutil.which("bash")


def fake_path(tmp_path: Path, tools: dict[str, str]) -> str:
    """A PATH holding bash and the given stand-in tools (name -> shell body) only."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "bash").symlink_to(BASH)
    for name, body in tools.items():
        (bin_dir / name).write_text(f"#!{BASH}\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return str(bin_dir)


def run_script(path: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BASH, str(INSTALL_SCRIPT)],
        env={"PATH": path, "HOME": os.environ.get("HOME", "/")},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_on_this_machine_prometheus_is_there_or_installed():
    """Where apt-get exists (Debian/Ubuntu, CI) nothing may skip: the script installs it."""
    if not shutil.which("apt-get"):
        pytest.skip("not an apt platform")
    binary = ensure_prometheus()
    assert Path(binary).name == "prometheus" and shutil.which("promtool")
    assert run_script(os.environ["PATH"]).returncode == 0


def test_no_package_manager_is_unavailable_with_a_clear_message(tmp_path):
    res = run_script(fake_path(tmp_path, {"id": "echo 0"}))
    assert res.returncode == 3, res.stderr
    msg = res.stderr.strip()
    assert len(msg.splitlines()) == 1
    assert "no supported package manager (apt-get, dnf, apk, pacman, brew)" in msg
    assert "install Prometheus >= 2.40 yourself" in msg and "--no-prometheus" in msg


def test_apt_without_root_or_sudo_is_unavailable(tmp_path):
    res = run_script(fake_path(tmp_path, {"id": "echo 1000", "apt-get": "exit 0"}))
    assert res.returncode == 3, res.stderr
    assert "needs root, and sudo is not available" in res.stderr


# stand-ins for a root apt machine whose install fails; tee/chmod/rm write nowhere
APT_ROOT = {
    "id": "echo 0",
    "tee": "cat >/dev/null",
    "chmod": "exit 0",
    "rm": "exit 0",
    "apt-get": '[ "$1" = update ] && exit 0; echo "E: download failed" >&2; exit 100',
}


def test_apt_without_the_package_is_unavailable(tmp_path):
    res = run_script(fake_path(tmp_path, {**APT_ROOT, "apt-cache": "exit 100"}))
    assert res.returncode == 3, res.stderr
    assert "apt has no 'prometheus' package in its sources" in res.stderr


def test_a_failed_install_is_an_error_not_unavailable(tmp_path, monkeypatch):
    path = fake_path(tmp_path, {**APT_ROOT, "apt-cache": "exit 0"})
    res = run_script(path)
    assert res.returncode == 1, res.stderr
    assert "installing with apt failed (exit 100)" in res.stderr
    monkeypatch.setenv("PATH", path)
    with pytest.raises(RuntimeError) as err:
        ensure_prometheus()
    assert not isinstance(err.value, PrometheusUnavailable)
    assert "install_prometheus.sh failed (exit 1)" in str(err.value)


def test_ensure_prometheus_raises_unavailable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", fake_path(tmp_path, {"id": "echo 0"}))
    with pytest.raises(PrometheusUnavailable, match="no supported package manager"):
        ensure_prometheus()
    # never a silent change to the system: it said what it was about to install, and how not to
    said = capsys.readouterr().err
    assert "prometheus: not on PATH; installing it with the platform's package manager" in said
    assert "CLUSTER_ARGS=--no-prometheus" in said


def test_dashboard_tests_skip_when_unavailable(monkeypatch):
    import test_dashboard as td

    def unavailable():
        raise PrometheusUnavailable("no supported package manager")

    monkeypatch.setattr(td, "ensure_prometheus", unavailable)
    with pytest.raises(pytest.skip.Exception, match="not available on this platform"):
        td.need_prometheus()

    def failed():
        raise RuntimeError("apt-get: download failed")

    monkeypatch.setattr(td, "ensure_prometheus", failed)
    with pytest.raises(pytest.fail.Exception, match="could not be installed"):
        td.need_prometheus()


def test_cluster_up_goes_on_without_prometheus_where_unavailable(tmp_path, monkeypatch, capsys):
    """`make cluster-up` on such a platform: Valkey and Ray come up (stand-ins here), Prometheus
    is skipped with the reason, cluster.json has no Prometheus URL."""
    monkeypatch.setattr(cluster, "redis_up", lambda cfg, st: "redis: started (stand-in)")
    monkeypatch.setattr(cluster, "ray_up", lambda cfg, st: "ray: started (stand-in)")

    def unavailable():
        raise PrometheusUnavailable("no supported package manager (apt-get, ...) is")

    monkeypatch.setattr(cluster, "ensure_prometheus", unavailable)
    _, cfg, _ = cluster.parse_args(
        ["up", "--state-dir", str(tmp_path / "state"), "--prometheus-port", str(free_port())]
    )
    assert cluster.up(cfg) == 0
    out = capsys.readouterr().out
    assert "prometheus: skipped, not available on this platform: no supported package" in out
    info = json.loads((tmp_path / "state" / "cluster.json").read_text())
    assert info["prometheus_url"] is None

    def failed():
        raise RuntimeError("install_prometheus.sh failed (exit 1)")

    monkeypatch.setattr(cluster, "ensure_prometheus", failed)
    with pytest.raises(RuntimeError, match="--no-prometheus"):  # a failed install still fails
        cluster.up(cfg)


# --- deploy/compose.yaml (untested with Docker: none here) ----------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_file_parses_and_binds_loopback_only(compose):
    services = compose["services"]
    assert set(services) == {"valkey", "prometheus", "grafana"}
    for name, svc in services.items():
        assert svc["network_mode"] == "host", name  # 127.0.0.1 is the host's loopback
        assert svc["image"].split(":")[1], f"{name}: pin an image tag"
    text = (DEPLOY / "compose.yaml").read_text()
    assert "0.0.0.0" not in text and "ports:" not in text
    assert "--web.listen-address=127.0.0.1:9090" in services["prometheus"]["command"]
    assert services["grafana"]["environment"]["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    conf = (DEPLOY / "redis" / "valkey.conf").read_text()
    assert "bind 127.0.0.1" in conf and "port 6389" in conf
    assert "requirepass" in services["valkey"]["command"][0]  # never without a password
    assert compose["secrets"]["redis_password"]["file"] == "../.state/compose/redis_password"


def test_compose_mounts_the_repos_own_files(compose):
    """Every repo file it mounts exists, at the path the provisioning expects."""
    mounts = {}
    for svc in compose["services"].values():
        for v in svc.get("volumes", []):
            src, dst = v.split(":")[:2]
            mounts[dst] = src
    for src in mounts.values():
        if src.startswith("./"):
            assert (DEPLOY / src).exists(), src
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/amago.yaml").read_text())
    dash_dir = provider["providers"][0]["options"]["path"]
    assert mounts[dash_dir] == "./grafana/dashboards"
    assert (DEPLOY / "grafana/dashboards/amago.json").exists()
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/amago.yaml").read_text())
    assert ds["datasources"][0]["url"] == "http://127.0.0.1:9090"
    # the prometheus.yml the header's command renders points at the mounted discovery files
    from deploy.ops.prometheus import PrometheusConfig, render_config

    rendered = yaml.safe_load(
        render_config(
            PrometheusConfig(),
            {"ray": ["/ray/prom_metrics_service_discovery.json"], "amago": ["/targets/*.json"]},
        )
    )
    files = [
        f
        for j in rendered["scrape_configs"]
        for c in j.get("file_sd_configs", [])
        for f in c["files"]
    ]
    assert {str(Path(f).parent) for f in files} <= {"/ray", "/targets"}
    assert {"/ray", "/targets"} <= set(mounts)


def _has_compose() -> bool:
    if not shutil.which("docker"):
        return False
    res = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return res.returncode == 0


@pytest.mark.skipif(not _has_compose(), reason="docker compose is not installed here")
def test_docker_compose_accepts_it():
    res = subprocess.run(
        ["docker", "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr

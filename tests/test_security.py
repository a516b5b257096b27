"""Secure by default: the embedded replay server always requires a password that stays off
command lines, the disk, reprs and the run's saved config; its files are this user's only;
binds are explicit (no wildcards), for the embedded server and for metrics on a cluster."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis

from common.config_utils import ConfigError
from deploy.config import DeployConfig, TrainConfig, compose
from replay_service import RedisConfig, ReplayConfig, connect
from replay_service.config import redact_url
from replay_service.server import EmbeddedServer, render_config

REPO = Path(__file__).resolve().parent.parent


def _raw(host: str, port: int, payload: bytes) -> bytes:
    """The server's first reply to ``payload`` on a fresh, unauthenticated connection."""
    with socket.create_connection((host, port), timeout=2.0) as s:
        s.sendall(payload)
        return s.recv(256)


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _holding(root: Path, secret: str) -> list[Path]:
    """Files under ``root`` whose bytes contain ``secret``."""
    return [p for p in _files(root) if secret.encode() in p.read_bytes()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return "X"


# -- the embedded server ------------------------------------------------------------------------
def test_embedded_server_refuses_unauthenticated_commands():
    with EmbeddedServer() as server:
        assert len(server.password) >= 32  # a random one: none was given
        for cmd in (
            b"*1\r\n$4\r\nPING\r\n",
            b"*1\r\n$8\r\nFLUSHALL\r\n",
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        ):
            assert _raw(server.host, server.port, cmd).startswith(b"-NOAUTH")
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host=server.host, port=server.port, password="wrong", retry=None).ping()
        with pytest.raises((redis.exceptions.AuthenticationError, redis.exceptions.ResponseError)):
            redis.Redis(host=server.host, port=server.port, retry=None).set("k", "v")
        client = connect(server.redis_config())  # the config carries the password
        assert client.ping()
        client.close()
    with EmbeddedServer() as other:  # every server its own password
        assert other.password != server.password


def test_extra_config_cannot_turn_auth_off():
    with EmbeddedServer(extra_config={"requirepass": ""}) as server:
        assert _raw(server.host, server.port, b"*1\r\n$4\r\nPING\r\n").startswith(b"-NOAUTH")


def test_password_is_on_no_command_line_environment_or_file(tmp_path):
    data = tmp_path / "data"
    with EmbeddedServer(password="given-Secret-0123456789", data_dir=data) as server:
        pid = server._server._process.pid
        proc = Path(f"/proc/{pid}")
        assert server.password.encode() not in (proc / "cmdline").read_bytes()
        assert server.password.encode() not in (proc / "environ").read_bytes()
        connect(server.redis_config()).set("k", "v")
        assert _holding(data, server.password) == []
        assert not (data / "valkey.conf").exists()  # the config went through stdin
    assert _holding(data, server.password) == []
    random_one = EmbeddedServer()
    with random_one:
        pid = random_one._server._process.pid
        assert random_one.password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        tmp = random_one._server.data_dir
        assert _holding(tmp, random_one.password) == []


def test_data_dir_and_server_files_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0)  # the most permissive umask: modes must not depend on it
    try:
        data = tmp_path / "nested" / "data"
        with EmbeddedServer(data_dir=data) as server:
            c = connect(server.redis_config())
            c.set("k", "v" * 1000)
            c.bgrewriteaof()
            time.sleep(0.3)
            c.close()
        # stopped: the RDB snapshot is written too
    finally:
        os.umask(old)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    names = {p.relative_to(data).as_posix() for p in _files(data)}
    assert "dump.rdb" in names and "valkey.log" in names
    assert any(n.startswith("appendonlydir/") for n in names), names
    for p in data.rglob("*"):
        want = 0o700 if p.is_dir() else 0o600
        assert stat.S_IMODE(p.stat().st_mode) == want, (p, oct(p.stat().st_mode))


def test_temporary_data_dir_is_private_and_goes_away():
    server = EmbeddedServer().start()
    tmp = server._server.data_dir
    try:
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o700
        for p in _files(tmp):
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    finally:
        server.stop()
    assert not tmp.exists()


def test_nothing_is_left_after_an_exception_inside_the_with(tmp_path):
    data = tmp_path / "data"
    with pytest.raises(RuntimeError, match="boom"):
        with EmbeddedServer(data_dir=data) as server:
            pid = server._server._process.pid
            tmp_server = EmbeddedServer()
            tmp_server.start()
            tmp = tmp_server._server.data_dir
            with tmp_server:
                raise RuntimeError("boom")
    assert not _alive(pid)
    assert not tmp.exists()
    assert _holding(data, server.password) == [] and not (data / "valkey.conf").exists()


def test_a_killed_parent_leaves_no_password_on_disk(tmp_path):
    """SIGKILL gives Python no chance to clean up: nothing secret may be on disk to leave."""
    data = tmp_path / "data"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from replay_service.server import EmbeddedServer
        s = EmbeddedServer(data_dir={str(data)!r}).start()
        t = EmbeddedServer().start()
        print(s._server._process.pid, t._server._process.pid, t._server.data_dir, s.password,
              t.password, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGKILL, out.stderr
    pid_a, pid_b, tmp, pw_a, pw_b = out.stdout.split()
    try:
        assert _holding(data, pw_a) == [] and _holding(Path(tmp), pw_b) == []
        assert not (data / "valkey.conf").exists() and not (Path(tmp) / "valkey.conf").exists()
    finally:  # the orphaned servers
        for pid in (int(pid_a), int(pid_b)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


_KILLED_PARENT = """
import os, signal, sys, threading
sys.path.insert(0, {repo!r})
from replay_service.server import EmbeddedServer
servers = []
def start(**kw):
    servers.append(EmbeddedServer(**kw).start())
start(data_dir={data!r})
start()
if {from_thread!r}:  # no PDEATHSIG from a thread: the watchdog alone
    t = threading.Thread(target=start); t.start(); t.join()
print(*[s._server._process.pid for s in servers], servers[1]._server.data_dir,
      servers[-1]._server.data_dir, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("from_thread", [False, True])
def test_a_killed_parent_takes_its_servers_and_their_files_along(tmp_path, from_thread):
    """SIGKILL of the process that started the servers: they go too (PDEATHSIG and/or the
    watchdog), the temporary data dirs are deleted, a persistent data_dir stays."""
    data = tmp_path / "data"
    script = _KILLED_PARENT.format(repo=str(REPO), data=str(data), from_thread=from_thread)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGKILL, out.stderr
    *pids, tmp_a, tmp_b = out.stdout.split()
    pids = [int(p) for p in pids]
    try:
        deadline = time.monotonic() + 8.0
        while time.monotonic() < deadline and (
            any(_alive(p) for p in pids) or Path(tmp_a).exists() or Path(tmp_b).exists()
        ):
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids), [p for p in pids if _alive(p)]
        assert not Path(tmp_a).exists() and not Path(tmp_b).exists()
        assert data.is_dir()  # persisted data is kept
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp_a, ignore_errors=True)
        shutil.rmtree(tmp_b, ignore_errors=True)


def test_stopping_a_server_stops_its_watchdog():
    server = EmbeddedServer().start()
    dog = server._server._watchdog
    assert dog is not None and dog.poll() is None
    server.stop()
    assert dog.poll() is not None
    server.start()
    dog = server._server._watchdog
    server.kill()
    assert dog.poll() is not None


def test_a_server_that_dies_first_leaves_no_temporary_directory():
    """The server SIGKILLed while its parent lives on (and never cleans up): its watchdog
    removes the temporary data directory (log; RDB/AOF of a server without data_dir) and
    exits, rather than leaving it behind."""
    server = EmbeddedServer().start()
    valkey = server._server
    tmp, dog = valkey._temp_data_dir, valkey._watchdog
    assert tmp is not None and tmp.is_dir() and dog.poll() is None
    os.kill(valkey._process.pid, signal.SIGKILL)
    valkey._process.wait(timeout=5)
    dog.wait(timeout=10)  # it polls every 0.2 s
    assert not tmp.exists()
    server.kill()  # the parent's own cleanup is still safe afterwards


def test_odd_passwords_cannot_inject_directives():
    pw = 'a b"c\\d\nrequirepass x\tdone'
    with EmbeddedServer(password=pw) as server:
        assert connect(server.redis_config()).ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host=server.host, port=server.port, password="x", retry=None).ping()
    assert render_config({"requirepass": pw}).count("\n") == 1


def test_host_is_the_bind_address():
    with EmbeddedServer(host="127.0.0.2") as server:
        assert server.url == f"redis://127.0.0.2:{server.port}"
        client = connect(server.redis_config())
        assert client.config_get("bind") == {"bind": "127.0.0.2"}
        assert client.config_get("protected-mode") == {"protected-mode": "yes"}
        client.close()
        with pytest.raises(OSError):  # not on 127.0.0.1 any more
            socket.create_connection(("127.0.0.1", server.port), timeout=1.0).close()
    with EmbeddedServer() as default:
        assert connect(default.redis_config()).config_get("bind") == {"bind": "127.0.0.1"}


def test_ipv6_loopback_host():
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with EmbeddedServer(host="::1") as server:
        assert server.url == f"redis://[::1]:{server.port}"
        assert connect(server.redis_config()).config_get("bind") == {"bind": "::1"}


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "*", ""])
def test_wildcard_hosts_are_refused(host):
    with pytest.raises(ValueError, match="wildcard"):
        EmbeddedServer(host=host, password="explicit")


def test_non_loopback_hosts_need_an_explicit_password():
    with pytest.raises(ValueError, match="password"):
        EmbeddedServer(host="10.11.12.13")
    EmbeddedServer(host="10.11.12.13", password="explicit")  # allowed (not started here)


# -- secrets out of reprs, logs and the saved config --------------------------------------------
def test_reprs_hide_the_password():
    secret = "hunter2-Very-Secret"
    cfg = RedisConfig(url=f"redis://user:{secret}@h:1/0?password={secret}", password=secret)
    for text in (repr(cfg), str(cfg), repr(ReplayConfig(redis=cfg)), repr(TrainConfig())):
        assert secret not in text
    assert "password='***'" in repr(cfg) and "user:***@h:1" in repr(cfg)
    assert "password='x'" not in repr(RedisConfig(password="x"))
    assert "password=''" in repr(RedisConfig())  # unset is visible as unset
    with EmbeddedServer() as server:
        assert server.password not in repr(server)
        assert server.password not in repr(server.redis_config())
    with pytest.raises(ConfigError) as e:
        RedisConfig(url=f"http://u:{secret}@h:1").validate()
    assert secret not in str(e.value)


@pytest.mark.parametrize(
    "url, shown",
    [
        ("redis://h:1", "redis://h:1"),
        ("redis://user@h:1/2", "redis://user@h:1/2"),
        ("redis://:pw@h:1", "redis://:***@h:1"),
        ("rediss://u:p@w@h:1", "rediss://u:***@h:1"),
        ("redis://h:1/0?password=pw&db=2", "redis://h:1/0?password=***&db=2"),
        ("unix:///run/r.sock?password=pw", "unix:///run/r.sock?password=***"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_saved_config_holds_no_password(tmp_path, monkeypatch):
    """run_training as it is (prepare, save config.yaml, the environment's password, the
    embedded server) with the training itself replaced: the clients get a password the run's
    config.yaml does not hold."""
    import deploy.train as train

    seen: dict = {}

    def fake_train(cfg, spec, runlog, servers, stack):
        r = cfg.replay.redis
        seen["password"] = r.password
        client = connect(r)
        seen["ping"] = client.ping()
        client.close()
        host, port = r.url.rsplit("//", 1)[1].rsplit(":", 1)
        seen["unauthenticated"] = _raw(host, int(port), b"*1\r\n$4\r\nPING\r\n")
        return {}

    monkeypatch.setattr(train, "train", fake_train)
    cfg = compose(["deploy.embedded_maxmemory_mb=64"])
    train.run_training(cfg, tmp_path / "run")  # no password anywhere: a random one
    assert seen["ping"] and seen["unauthenticated"].startswith(b"-NOAUTH")
    generated = seen["password"]
    assert len(generated) >= 32
    monkeypatch.setenv("AMAGO_TEST_REDIS_PW", "from-the-Environment-42")
    cfg = compose(["deploy.embedded_maxmemory_mb=64"])
    cfg.deploy.redis_password_env = "AMAGO_TEST_REDIS_PW"
    train.run_training(cfg, tmp_path / "run2")  # the environment's password is used
    assert seen["ping"] and seen["password"] == "from-the-Environment-42"
    for run in ("run", "run2"):
        for f in _files(tmp_path / run):
            text = f.read_text(errors="replace")
            assert generated not in text and "from-the-Environment-42" not in text, f
        assert (tmp_path / run / "config.yaml").exists()


def test_replay_endpoint_carries_the_password_and_keeps_an_external_url():
    from deploy.run.endpoint import replay_endpoint

    cfg = TrainConfig()
    cfg.deploy.embedded_maxmemory_mb = 64
    with replay_endpoint(cfg) as run_cfg:
        r = run_cfg.replay.redis
        assert r.url and r.password and cfg.replay.redis.password == ""  # the input untouched
        assert connect(r).ping()
    given = dataclasses.replace(cfg.replay.redis, password="chosen-by-the-user")
    cfg = dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, redis=given))
    with replay_endpoint(cfg) as run_cfg:
        assert run_cfg.replay.redis.password == "chosen-by-the-user"
        assert connect(run_cfg.replay.redis).ping()
    ext = dataclasses.replace(given, url="redis://127.0.0.1:1")  # nothing listens there
    cfg = dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, redis=ext))
    with replay_endpoint(cfg) as run_cfg:
        assert run_cfg is cfg  # an external server: nothing started, nothing changed


# -- metrics binds ------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "*", "0:0::0"])
def test_wildcard_metrics_hosts_are_refused_in_cluster_mode(host):
    with pytest.raises(ConfigError) as e:
        DeployConfig(ray_address="auto", metrics_host=host).validate()
    assert e.value.field == "metrics_host"
    with pytest.raises(ConfigError):
        DeployConfig(metrics_host=host).validate()  # and locally (loopback only)


@pytest.mark.parametrize("host", ["node", "10.0.0.5", "head.internal", "127.0.0.1"])
def test_explicit_metrics_hosts_are_accepted_in_cluster_mode(host):
    DeployConfig(ray_address="auto", metrics_host=host).validate()


def test_saved_config_redacts_a_password_inside_the_server_url(tmp_path, monkeypatch):
    """An external server's URL with a password in it (``redis://:PW@host``) reaches the
    clients whole; the run's config.yaml shows ``***`` in its place."""
    import deploy.train as train

    seen: dict = {}
    monkeypatch.setattr(
        train, "train", lambda cfg, *a, **k: seen.update(url=cfg.replay.redis.url) or {}
    )
    url = "redis://:pw-in-the-URL-17@127.0.0.1:1"  # nothing listens there: only a warning
    train.run_training(compose([f"replay.redis.url={url}"]), tmp_path / "run")
    assert seen["url"] == url
    assert _holding(tmp_path / "run", "pw-in-the-URL-17") == []
    assert "redis://:***@127.0.0.1:1" in (tmp_path / "run" / "config.yaml").read_text()


@pytest.mark.parametrize(
    "text, clean",
    [
        ("- replay.redis.password=hunter2\n", "- replay.redis.password=***\n"),
        ("    password: hunter2\n", "    password: ***\n"),
        ("    password: 'hunter2'\n", "    password: '***'\n"),
        ("    password: ''\n", "    password: ''\n"),  # nothing to hide
        ("- replay.redis.url=redis://:hunter2@h:1\n", "- replay.redis.url=redis://:***@h:1\n"),
        ("url: rediss://u:hunter2@h:1/0\n", "url: rediss://u:***@h:1/0\n"),
        ("override_dirname: a=1,replay.redis.password=hunter2,b=2", None),
        ("url: redis://h:1/0?password=hunter2&db=2", "url: redis://h:1/0?password=***&db=2"),
        ("url: redis://h:1\nname: x\n", "url: redis://h:1\nname: x\n"),
    ],
)
def test_scrub_text_hides_every_password_form(text, clean):
    from deploy.run.run_dir import scrub_text

    out = scrub_text(text)
    assert "hunter2" not in out
    if clean is not None:
        assert out == clean


def _hydra_main(monkeypatch, fake_run_training, *overrides: str) -> int:
    """``python -m deploy.train OVERRIDES`` in-process (Hydra composes, makes the run
    directory and writes .hydra/), with ``run_training`` replaced; returns the exit code."""
    import deploy.train as train

    monkeypatch.setattr(train, "run_training", fake_run_training)
    monkeypatch.setattr(sys, "argv", ["deploy.train", *overrides])
    try:
        train.main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_hydra_files_of_a_run_hold_no_password(tmp_path, monkeypatch):
    """Hydra writes the command line into ``.hydra/`` (overrides.yaml, hydra.yaml) and the
    composed config (config.yaml): the entrypoint scrubs them before the run starts."""
    run = tmp_path / "run"
    seen = {}

    def fake(cfg, run_dir):
        seen["hydra"] = {p.name: p.read_text() for p in (Path(run_dir) / ".hydra").iterdir()}
        return {
            "run_dir": str(run_dir),
            "final_checkpoint": None,
            "final_eval_return": None,
            "updates": 1,
            "stop_reason": "max_updates",
        }

    rc = _hydra_main(
        monkeypatch,
        fake,
        "replay.redis.password=hunter2-cli",
        "replay.redis.url=redis://:hunter3-url@127.0.0.1:1",
        f"hydra.run.dir={run}",
    )
    assert rc == 0
    assert set(seen["hydra"]) == {"config.yaml", "hydra.yaml", "overrides.yaml"}
    assert "replay.redis.password=***" in seen["hydra"]["overrides.yaml"]
    assert _holding(run, "hunter2-cli") == [] and _holding(run, "hunter3-url") == []


def test_a_config_that_fails_validation_leaves_no_run_directory(tmp_path, monkeypatch, capsys):
    """A ConfigError (raised before anything starts) removes the directory Hydra made for the
    run; a directory that held anything else before is kept."""

    def fake(cfg, run_dir):
        raise ConfigError("run.max_updates", "must be >= 0")

    run = tmp_path / "runs" / "x"
    assert _hydra_main(monkeypatch, fake, f"hydra.run.dir={run}") == 2
    assert not run.exists()
    assert capsys.readouterr().err.strip().startswith("error: config field 'run.max_updates'")
    kept = tmp_path / "mine"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert _hydra_main(monkeypatch, fake, f"hydra.run.dir={kept}") == 2
    assert (kept / "notes.txt").read_text() == "mine"

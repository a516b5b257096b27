"""Every training command line README.md (and docs/deploy.md) documents composes, validates and builds its env
(``deploy.config.prepare``: what ``python -m deploy.train`` checks before it starts anything),
and every documented failure fails the way the README shows. The README is read here, so a
command that stops working fails this test.

Parsed from README.md: ``$ python -m deploy.train ...`` lines and ``ray job submit ... --
python -m deploy.train ...`` (continuation lines joined), ``make run [EXPERIMENT=...] [ARGS="..."]`` (inline code too),
and the ``# <module>.py`` Python block of the bring-your-own-env section, written to a temporary
directory so its ``module:Id`` commands resolve as they do for a user. The ``$ python -m
deploy.evaluate|export`` lines and the ``load_policy`` snippet of "Evaluate and export" run
for real on a run directory built by the test.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from common.config_utils import ConfigError
from deploy.config import compose, prepare, resolve_environment

README = Path(__file__).resolve().parent.parent / "README.md"
DOCS = README.parent / "docs" / "deploy.md"  # the cluster guide's commands too
TEXT = README.read_text() + "\n" + DOCS.read_text()

TRAIN = re.compile(r"(?:^\$ |--\s+)python -m deploy\.train\b([^\n`]*)")
MAKE_RUN = re.compile(r'make run((?: EXPERIMENT=[\w-]+)?)((?: ARGS="[^"]*")?)')


def _joined_lines() -> list[str]:
    """README lines with shell continuations (trailing backslash) joined."""
    out, buf = [], ""
    for line in TEXT.splitlines():
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        out.append(buf + line)
        buf = ""
    return out


def _train_commands() -> list[tuple[list[str], str | None]]:
    """(overrides, expected error) of every documented deploy.train command. The expected
    error is the field of an ``error: config field 'F'`` line right after the command, or
    "hydra" for a command annotated ``# Hydra:``."""
    lines = _joined_lines()
    found = []
    for i, line in enumerate(lines):
        m = TRAIN.search(line)
        if not m:
            continue
        args, _, comment = m.group(1).partition("#")
        expect = None
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        err = re.match(r"error: config field '([^']+)'", nxt)
        if err:
            expect = err.group(1)
        elif "Hydra:" in comment:
            expect = "hydra"
        found.append((shlex.split(args.replace("<overrides>", "")), expect))
    return found


def _make_run_commands() -> list[list[str]]:
    out = []
    for m in MAKE_RUN.finditer(TEXT):
        experiment = m.group(1).strip().removeprefix("EXPERIMENT=") or "tmaze"
        args = shlex.split(m.group(2).strip().removeprefix("ARGS=")) if m.group(2) else []
        args = shlex.split(args[0]) if args else []
        out.append(([] if experiment == "none" else [f"experiment={experiment}"]) + args)
    return out


TRAIN_COMMANDS = _train_commands()
MAKE_RUNS = _make_run_commands()


@pytest.fixture(autouse=True)
def user_module(tmp_path, monkeypatch):
    """The README's own env module, importable as a user's module in the working dir is."""
    m = re.search(r"```python\n# (\w+)\.py\n(.*?)```", TEXT, re.S)
    assert m, "README lost its bring-your-own-env module"
    (tmp_path / f"{m.group(1)}.py").write_text(m.group(2))
    monkeypatch.syspath_prepend(str(tmp_path))
    # cluster commands read the cluster's Redis from the environment (never contacted here)
    monkeypatch.setenv("AMAGO_REDIS_URL", "redis://127.0.0.1:1")


def test_the_readme_documents_commands():
    assert len(TRAIN_COMMANDS) >= 15 and len(MAKE_RUNS) >= 5
    assert sum(e is not None for _, e in TRAIN_COMMANDS) >= 4  # the failure examples


@pytest.mark.parametrize(
    "overrides,expect", TRAIN_COMMANDS, ids=[" ".join(o) or "(none)" for o, _ in TRAIN_COMMANDS]
)
def test_documented_train_command(overrides, expect):
    if expect == "hydra":
        with pytest.raises(Exception, match="override"):
            compose(overrides)
        return
    if expect is not None:
        with pytest.raises(ConfigError) as err:
            prepare(resolve_environment(compose(overrides, resolved=True)))
        assert err.value.field == expect
        return
    cfg, spec, _ = prepare(resolve_environment(compose(overrides)))
    assert cfg.learner.max_seq_len <= max(spec.max_episode_steps + 1, cfg.learner.seq_len_cap)


@pytest.mark.parametrize("overrides", MAKE_RUNS, ids=[" ".join(o) for o in MAKE_RUNS])
def test_documented_make_run(overrides):
    prepare(compose(overrides))


def test_make_run_default_is_the_tmaze_experiment():
    """`make run` = experiment=tmaze: T-Maze with its tuning, stopping at the solved return."""
    makefile = (README.parent / "Makefile").read_text()
    assert "EXPERIMENT ?= tmaze" in makefile
    cfg, _, _ = prepare(compose(["experiment=tmaze"]))
    assert cfg.env.id == "amago/TMaze-v0" and cfg.run.stop_at_return == 1.0


def test_env_id_alone_inherits_no_preset():
    """`env.id=<any id>` gets the generic defaults: no kwargs, tuning or stop return of the
    default env's experiment."""
    generic = compose([])
    cfg, _, _ = prepare(compose(["env.id=CartPole-v1"]))
    assert cfg.env.kwargs == {} and cfg.run.stop_at_return is None
    assert cfg.learner.model == generic.learner.model and cfg.learner.lr == generic.learner.lr
    assert cfg.replay.rate_limit == generic.replay.rate_limit
    assert cfg.learner.max_seq_len == 256  # CartPole's 500-step limit + 1, capped


# -- "Evaluate and export": the commands run for real on a run directory built here ---------
AROUND = re.compile(r"^\$ python -m deploy\.(evaluate|export)\b([^\n#`]*)", re.M)
SNIPPET = re.compile(r"```python\n(# acting with an exported policy[^\n]*\n.*?)```", re.S)


def test_documented_evaluate_and_export_commands_run(tmp_path, monkeypatch, capsys):
    """Every ``$ python -m deploy.evaluate|export`` line of the README, in order, with ``$RUN``
    a T-Maze run directory (a learner checkpoint after a few updates), then the
    ``load_policy`` snippet on the policy those commands exported."""
    from test_export import make_run

    from deploy.evaluate import main as evaluate_main
    from deploy.export import main as export_main

    commands = [(m.group(1), shlex.split(m.group(2))) for m in AROUND.finditer(TEXT)]
    assert {c for c, _ in commands} == {"evaluate", "export"} and len(commands) >= 5
    snippet = SNIPPET.search(TEXT)
    assert snippet, "README lost its load_policy snippet"
    run = tmp_path / "runs" / "tmaze" / "2026-11-21_14-40-41"
    make_run(run, "experiment=tmaze")
    monkeypatch.chdir(tmp_path)
    for command, args in commands:
        args = [str(run) if a == "$RUN" else a for a in args]
        (evaluate_main if command == "evaluate" else export_main)(args)
        out = capsys.readouterr().out
        assert ("return mean" in out) if command == "evaluate" else ("exported policy" in out)
        if "video=true" in args:
            assert any((run / "videos").iterdir())
    exec(compile(snippet.group(1), "README snippet", "exec"), {"__name__": "__main__"})
    assert re.fullmatch(r"return -?\d+\.\d\d\n", capsys.readouterr().out)

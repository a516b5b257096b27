"""Every training command line the documentation shows composes, validates and builds its env
(``deploy.config.prepare``: what ``python -m deploy.train`` checks before it starts anything),
and every documented failure fails the way the documentation shows. The documents are read
here, so a command that stops working fails this test.

Documents: README.md, every docs/*.md and benchmarks/README.md (``DOCS``), each parsed on its
own (a command, its continuation lines and the error line after it belong to one file).
Parsed from each: ``$ python -m deploy.train ...`` lines and ``ray job submit ... --
python -m deploy.train ...`` (continuation lines joined), ``make run [EXPERIMENT=...] [ARGS="..."]`` (inline code too),
and the ``# <module>.py`` Python blocks (the README's bring-your-own-env module), written to a
temporary directory so their ``module:Id`` commands resolve as they do for a user. The ``$
python -m deploy.tools.evaluate|export`` lines and the ``load_policy`` snippet (docs/evaluate.md)
run for real on a run directory built by the test. Every relative link of these documents
and CHANGELOG.md points at a file that exists, and at a heading of it when it names one.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from common.config_utils import ConfigError
from deploy.config import compose, prepare, resolve_environment

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: the documents whose commands are checked, README first
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
TEXTS = {d.relative_to(ROOT).as_posix(): d.read_text() for d in DOCS}

TRAIN = re.compile(r"(?:^\$ |--\s+)python -m deploy\.train\b([^\n`]*)")
MAKE_RUN = re.compile(r'make run((?: EXPERIMENT=[\w-]+)?)((?: ARGS="[^"]*")?)')


def _joined_lines(text: str) -> list[str]:
    """A document's lines with shell continuations (trailing backslash) joined."""
    out, buf = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        out.append(buf + line)
        buf = ""
    return out


def _train_commands() -> list[tuple[str, list[str], str | None]]:
    """(document, overrides, expected error) of every documented deploy.train command. The
    expected error is the field of an ``error: config field 'F'`` line right after the command,
    or "hydra" for a command annotated ``# Hydra:``."""
    found = []
    for doc, text in TEXTS.items():
        lines = _joined_lines(text)
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
            found.append((doc, shlex.split(args.replace("<overrides>", "")), expect))
    return found


def _make_run_commands() -> list[tuple[str, list[str]]]:
    out = []
    for doc, text in TEXTS.items():
        for m in MAKE_RUN.finditer(text):
            experiment = m.group(1).strip().removeprefix("EXPERIMENT=") or "tmaze"
            args = shlex.split(m.group(2).strip().removeprefix("ARGS=")) if m.group(2) else []
            args = shlex.split(args[0]) if args else []
            out.append((doc, ([] if experiment == "none" else [f"experiment={experiment}"]) + args))
    return out


TRAIN_COMMANDS = _train_commands()
MAKE_RUNS = _make_run_commands()
MODULE = re.compile(r"```python\n# (\w+)\.py\n(.*?)```", re.S)


@pytest.fixture(autouse=True)
def user_module(tmp_path, monkeypatch):
    """The documented env modules, importable as a user's module in the working dir is."""
    modules = [m for text in TEXTS.values() for m in MODULE.finditer(text)]
    assert MODULE.search(TEXTS["README.md"]), "README lost its bring-your-own-env module"
    for m in modules:
        (tmp_path / f"{m.group(1)}.py").write_text(m.group(2))
    monkeypatch.syspath_prepend(str(tmp_path))
    # cluster commands read the cluster's Redis from the environment (never contacted here)
    monkeypatch.setenv("AMAGO_REDIS_URL", "redis://127.0.0.1:1")


def test_the_readme_documents_commands():
    assert len(TRAIN_COMMANDS) >= 15 and len(MAKE_RUNS) >= 5
    assert sum(e is not None for _, _, e in TRAIN_COMMANDS) >= 4  # the failure examples
    # the front page keeps its own: `make run` and its variants, bring-your-own-env, cluster
    assert sum(d == "README.md" for d, _ in MAKE_RUNS) >= 5
    assert sum(d == "README.md" for d, _, _ in TRAIN_COMMANDS) >= 3


@pytest.mark.parametrize(
    "overrides,expect",
    [(o, e) for _, o, e in TRAIN_COMMANDS],
    ids=[f"{d}: {' '.join(o) or '(none)'}" for d, o, _ in TRAIN_COMMANDS],
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


@pytest.mark.parametrize(
    "overrides", [o for _, o in MAKE_RUNS], ids=[f"{d}: {' '.join(o)}" for d, o in MAKE_RUNS]
)
def test_documented_make_run(overrides):
    prepare(compose(overrides))


def test_make_run_default_is_the_tmaze_experiment():
    """`make run` = experiment=tmaze: T-Maze with its tuning, stopping at the solved return."""
    makefile = (ROOT / "Makefile").read_text()
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
    # CartPole's 500-step limit + 1, capped for where the learner runs (no GPU here)
    assert cfg.learner.max_seq_len == cfg.learner.seq_len_cap == 64
    on_gpu, _, _ = prepare(compose(["env.id=CartPole-v1", "learner.device=cuda"]))
    assert on_gpu.learner.max_seq_len == on_gpu.learner.seq_len_cap == 256


# -- "Evaluate and export": the commands run for real on a run directory built here ---------
AROUND = re.compile(r"^\$ python -m deploy\.tools\.(evaluate|export)\b([^\n#`]*)", re.M)
SNIPPET = re.compile(r"```python\n(# acting with an exported policy[^\n]*\n.*?)```", re.S)


def test_documented_evaluate_and_export_commands_run(tmp_path, monkeypatch, capsys):
    """Every documented ``$ python -m deploy.tools.evaluate|export`` line, in order, with ``$RUN``
    a T-Maze run directory (a learner checkpoint after a few updates), then the
    ``load_policy`` snippet on the policy those commands exported."""
    from test_export import make_run

    from deploy.tools.evaluate import main as evaluate_main
    from deploy.tools.export import main as export_main

    commands = [
        (m.group(1), shlex.split(m.group(2)))
        for text in TEXTS.values()
        for m in AROUND.finditer(text)
    ]
    assert {c for c, _ in commands} == {"evaluate", "export"} and len(commands) >= 5
    snippets = [s for text in TEXTS.values() if (s := SNIPPET.search(text))]
    assert snippets, "the docs lost their load_policy snippet"
    snippet = snippets[0]
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
    exec(compile(snippet.group(1), "documented snippet", "exec"), {"__name__": "__main__"})
    assert re.fullmatch(r"return -?\d+\.\d\d\n", capsys.readouterr().out)


# -- links: every relative link of the documents points at a file, and at one of its headings --
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code (no links or headings there)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(text: str) -> set[str]:
    """GitHub's anchors of a document's headings: lower case, punctuation dropped, spaces to -."""
    heads = re.findall(r"^#{1,6} (.+)$", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


LINKED = [*DOCS, ROOT / "CHANGELOG.md"]


@pytest.mark.parametrize("doc", LINKED, ids=[d.relative_to(ROOT).as_posix() for d in LINKED])
def test_relative_links_resolve(doc):
    links = LINK.findall(_prose(doc.read_text()))
    broken = []
    for target in links:
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked here
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text()):
            broken.append(f"{target}: no heading #{anchor}")
    assert not broken, broken


def test_the_readme_is_a_front_page():
    """README.md stays a front page (issue 27): the reference lives in docs/ and benchmarks/."""
    assert len(README.read_text().splitlines()) <= 300

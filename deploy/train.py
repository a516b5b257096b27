"""Training entrypoint: builds the replay service, the learner and the rollout actors, runs
them to a budget (``deploy/run/driver.py``), evaluates greedily along the way and writes a run
directory.

    python -m deploy.train                                   # local: Ray + embedded Valkey
    python -m deploy.train experiment=bandit run.max_env_steps=20000
    python -m deploy.train env.id=CartPole-v1                # any env: the generic defaults
    make cluster-up && source .state/cluster/env.sh     # then, see docs/deploy.md:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m deploy.train deploy=cluster run.max_env_steps=20000

The run directory (docs/running.md): ``config.yaml``, ``metrics.jsonl``, ``train.log``,
``checkpoints/``, ``learning_curve.png``, ``summary.json``, ``metrics_final.prom`` and the
trackers' files (``run.tracking``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

from deploy.config import TrainConfig, plan_run
from deploy.run.discovery import ScrapeTargets, process_addresses
from deploy.run.driver import Driver, Watches, end_of_run
from deploy.run.endpoint import replay_servers
from deploy.run.fleet import start_fleet
from deploy.run.progress import exit_code
from deploy.run.run_dir import save_config
from deploy.run.supervisor import Supervisor
from deploy.run.tracking import RunLog, console, make_trackers


def run_training(cfg: TrainConfig, run_dir: str | Path) -> dict:
    """Train to the budget; returns (and writes) the run summary.

    Resolves the run once first (:func:`deploy.config.plan_run`: raises ``ConfigError``
    before any process or server starts), prints the derived fields and writes the config the
    run uses to ``run_dir/config.yaml`` (without secrets). What the run starts (replay servers, Ray,
    trackers, workers, the scrape-targets file) is held by one exit stack and ended in
    reverse. The run's clock (``time_s``) starts here: checks and start-up are on it."""
    started = time.monotonic()
    plan = plan_run(cfg)
    spec, derived = plan.spec, plan.derived
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(plan.cfg, run_dir / "config.yaml")  # secrets left out
    for d in derived:
        console(run_dir, f"derived: {d}")
    with contextlib.ExitStack() as stack:
        cfg, servers = stack.enter_context(replay_servers(plan.cfg))
        from deploy.tools.replay_dump import dump_run_replay, load_run_prefill

        prefill = load_run_prefill(cfg, spec)  # offline data, before the learner samples
        runlog = RunLog(run_dir, t0=started)
        summary = train(cfg, spec, runlog, servers, stack)
        if prefill is not None:
            summary["prefill"] = prefill
        if cfg.run.dump_replay_on_exit:
            summary["replay_dump"] = dump_run_replay(cfg, spec, run_dir)
    summary.update(run_dir=str(run_dir), derived={d.field: d.value for d in derived})
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def train(cfg: TrainConfig, spec, runlog: RunLog, servers: list, stack) -> dict:
    """Start Ray (unless joined), the workers and the fleet on ``stack``, drive them to the
    end of the run; the summary's training part."""
    from common.metrics import Metrics, resolve_metrics_host
    from common.ray_utils import ray_session
    from deploy.run.builder import build_workers, learner_gpu
    from learner.group import release_all

    d, run_dir = cfg.deploy, runlog.run_dir
    runlog.start_trackers(lambda: make_trackers(cfg, run_dir))  # while Ray and workers start
    stack.callback(runlog.close)
    stack.enter_context(ray_session(d.ray_address, d.num_cpus or os.cpu_count()))
    use_gpu = learner_gpu(cfg)  # learner.device=cuda where no GPU can ever come: one line
    metrics = Metrics()
    host = resolve_metrics_host(d.metrics_host)
    served = d.serve_metrics and f"{host}:{metrics.serve(d.metrics_host)}"
    handles: list = []
    stack.callback(release_all, handles)
    w = build_workers(cfg, spec, run_dir, use_gpu, started=handles)
    runlog.adopt_trackers()
    fixed = [served, *process_addresses([w.learner, *w.evaluators])] if served else []
    targets = ScrapeTargets.for_run(cfg, run_dir, fixed)
    stack.callback(targets.close)
    sup = Supervisor(metrics)
    fleet, control_as = start_fleet(
        cfg, w, run_dir, sup, metrics, targets, handles, runlog.elapsed, runlog.say
    )
    targets.publish(fleet.addresses())
    watches = Watches.for_run(cfg, servers, metrics, runlog.say)
    with watches.stop.installed():  # after Ray's start: its core worker aborts on SIGTERM
        summary = Driver(cfg, w, watches, runlog, metrics, sup, fleet).run()
    summary["replay_server_restarts"] = watches.servers.summary()
    summary["fleet"] = {"control": control_as, **fleet.summary()}
    return {**summary, **end_of_run(cfg, w, fleet, [*fixed, *fleet.addresses()], runlog)}


def main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from deploy.config import register_schemas

    register_schemas()
    config_dir = str(Path(__file__).resolve().parent.parent / "configs")

    @hydra.main(config_path=config_dir, config_name="config", version_base="1.3")
    def _main(dcfg) -> float | None:
        """One run; returns its final greedy evaluation return (the objective a Hydra
        sweeper such as Optuna's maximises; None without a final evaluation)."""
        from common.config_utils import ConfigError
        from deploy.run.run_dir import discard_if_untouched, scrub_secrets

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        if HydraConfig.get().output_subdir:  # .hydra/: before anything can fail
            scrub_secrets(run_dir / HydraConfig.get().output_subdir)
        cfg = OmegaConf.to_object(dcfg)
        try:
            summary = run_training(cfg, run_dir)
        except ConfigError as e:  # raised before anything started: one line, no traceback
            discard_if_untouched(run_dir)  # no run directory for a run that never started
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        print(f"run directory: {summary['run_dir']}")
        if summary.get("plot"):
            print(f"learning curve: {summary['plot']}")
        print(f"checkpoint: {summary['final_checkpoint']}")
        code, say = exit_code(summary, cfg)
        if say:
            print(say, file=sys.stderr)
        if code:
            sys.exit(code)
        return summary["final_eval_return"]

    _main()


if __name__ == "__main__":
    main()

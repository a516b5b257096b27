"""The AMAGO learner: pure torch, no Ray, no Redis.

Modules (import from them directly; this package imports nothing so that reading the config
schema does not load torch):

* ``learner.config``: ``ModelConfig``, ``LearnerConfig`` (Hydra structured-config schemas).
* ``learner.model``: timestep encoder, Transformer / GRU / MLP trajectory encoders.
* ``learner.agent``: actor and critic heads, PopArt, ``PolicyNet``, ``AmagoAgent``.
* ``learner.losses``: pure loss pieces (TD targets, advantage filter, two-hot, masked mean).
* ``learner.amago``: ``AmagoLearner`` (``train_step``, ``policy_weights``, ``make_policy``...).
* ``learner.variants``: the registry of update variants (``learner.variant``: ``amago``,
  ``amago2``; one file each) whose hooks ``AmagoLearner`` calls.
* ``learner.inference``: ``InferencePolicy``, the KV-cached batched policy actors run.
* ``learner.checkpoint``: ``save_checkpoint`` / ``load_checkpoint`` over plain state (config dict,
  spec, ``AmagoLearner.state_dict()``); ``latest_checkpoint``, ``list_checkpoints``.
* ``learner.synthetic``: batch collation and random batches for tests and benchmarks.
"""

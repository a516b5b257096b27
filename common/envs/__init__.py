"""Built-in tasks, registered with gymnasium under the ``amago/`` namespace."""

import gymnasium as gym

_REGISTERED = {
    "amago/TMaze-v0": "common.envs.tmaze:TMaze",
}

for _id, _entry in _REGISTERED.items():
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_entry)

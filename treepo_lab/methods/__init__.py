"""Tree-rollout methods beside TreePO, one file each: importing this package registers them all.

A method file registers what it adds (an advantage estimator in ESTIMATORS, a rollout loop in SAMPLERS,
or both) with its facts: its strategy label, whether it needs a tree or entropies, its knobs. Nothing
else lists method names: the config check, the strategy tags, the sweep space and the reports look the
facts up. Method files import numpy at most (a config is checked without torch). The package sits above
algo/ and rollout/ (it builds on both, they never import it): treepo_lab.config, the strategy tags and
the sweeps import it, so `compute_advantages` called on its own needs `import treepo_lab.methods` first.
README "Add a method".
"""
from __future__ import annotations

import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

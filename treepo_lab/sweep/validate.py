"""Everything a spec can get wrong, refused before any Optuna study or MLflow run exists: unknown keys
(with a did-you-mean), registry names, objective metrics that training never logs, and every point of a
finite space (or each value of a larger one) that the experiment config's own validation rejects, or whose
world size and device the machine cannot run (the check `treepo-lab train` makes before it launches ranks)."""
from __future__ import annotations

import difflib
from functools import lru_cache

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from treepo_lab.config import ExperimentConfig, list_experiments
from treepo_lab.registry import ConfigError
from treepo_lab.sweep import metrics
from treepo_lab.sweep.space import checked_units, point_text, trial_config
from treepo_lab.sweep.spec import SweepSpec

SPECIAL = ("experiment",)


@lru_cache(maxsize=1)
def config_keys() -> tuple[frozenset[str], frozenset[str]]:
    """(every dotted key of the experiment config, the keys of free-form dict fields such as tracking.tags)."""
    keys, open_dicts = set(), set()

    def walk(node: DictConfig, prefix: str) -> None:
        for k in node.keys():
            key = f"{prefix}{k}"
            keys.add(key)
            child = node._get_node(k)
            if isinstance(child, DictConfig):
                if OmegaConf.get_type(child) is dict:
                    open_dicts.add(key)
                else:
                    walk(child, key + ".")

    walk(OmegaConf.structured(ExperimentConfig), "")
    return frozenset(keys), frozenset(open_dicts)


def check_key(key: str, where: str) -> None:
    keys, open_dicts = config_keys()
    if key == "seed":
        raise ConfigError(where, key, "a config key other than seed (list the seeds under seeds: instead)")
    if key in keys or key in SPECIAL or any(key.startswith(d + ".") for d in open_dicts):
        return
    close = difflib.get_close_matches(key, sorted(keys), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}?" if close else "see `treepo-lab show` for the config keys"
    raise ConfigError(where, key, f"a key of the experiment config; {hint}")


def check_experiments(spec: SweepSpec) -> None:
    known = list_experiments()
    names = [spec.experiment]
    if any(p.key == "experiment" for p in spec.params):
        p = spec.param("experiment")
        if not p.finite:
            raise ConfigError("search_space.experiment", p.text, "a choice(...) of registry experiments")
        names += [str(v) for v in p.values]
    for n in names:
        if n not in known:
            # a cut-off name first (grpo_tree -> grpo_tree_sampling), then the similar ones (spo_tree)
            prefixed = [k for k in known if k.startswith(n)]
            close = list(dict.fromkeys(prefixed + difflib.get_close_matches(n, known, n=3, cutoff=0.5)))[:3]
            raise ConfigError("experiment", n, f"a registry experiment (experiments/*.yaml)"
                              f"{'; did you mean ' + ' or '.join(close) + '?' if close else ': ' + ', '.join(known)}")


def check_objectives(spec: SweepSpec) -> None:
    for i, o in enumerate(spec.objectives):
        if not metrics.is_logged(o.metric):
            close = metrics.suggestions(o.metric)
            raise ConfigError(f"objectives[{i}].metric", o.metric,
                              "a metric that training logs" + (f"; did you mean {' or '.join(close)}?" if close else
                                                               " (eval/accuracy, cumulative/rollout/decoded_tokens, ...)"))


def check_points(spec: SweepSpec) -> int:
    """Compose and validate every point (or each value; every unit of a unit sweep); returns how many were checked."""
    checked = checked_units(spec)
    for point, seed in checked:
        where = point_text(point) + (f" seed={seed}" if spec.per_unit else "")
        try:  # validate checks the world and devices too, as `treepo-lab train` does before it launches ranks
            trial_config(spec, point, seed)
        except ConfigError as err:
            key = "nproc_per_trial" if err.key == "trainer.nproc" and spec.nproc_per_trial > 1 else err.key
            raise ConfigError(key, err.value, f"{err.allowed} (sweep point {where})") from None
        except (HydraException, OmegaConfBaseException) as err:
            first = str(err).strip().splitlines()[0]
            raise ConfigError("overrides", where, f"values the config accepts ({first})") from None
    return len(checked)


def validate_spec(spec: SweepSpec) -> SweepSpec:
    for p in spec.params:
        check_key(p.key, "blocks" if "blocks" in spec.source else "grid" if spec.grid else "search_space")
    for o in spec.overrides:
        check_key(o.split("=", 1)[0].lstrip("+~"), "overrides")
    check_experiments(spec)
    check_objectives(spec)
    check_points(spec)
    return spec

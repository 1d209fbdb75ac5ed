"""What every subcommand shares: its entry in the command table (`Command`), the split of its arguments into
the key=value options it reads itself and Hydra overrides, and the config it runs on (validated once, by
treepo_lab/config.py's load_config)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from treepo_lab.commands.output import UserError


@dataclass(frozen=True)
class Command:
    run: Callable  # fn(own: dict, overrides: list[str], raw: list[str]) -> exit status or None
    summary: str
    usage: str
    details: str = ""
    own: tuple[str, ...] = ("experiment",)  # key=value arguments the command reads itself
    overrides: bool = True  # takes Hydra overrides
    raw: bool = False  # reads its arguments itself (argparse, a run id first): `run` gets them untouched
    own_help: bool = False  # its argparse prints --help


def split_args(args: list[str], cmd: Command) -> tuple[dict[str, str], list[str]]:
    own, overrides = {}, []
    for a in args:
        key = a.split("=", 1)[0]
        if "=" in a and key in cmd.own:
            own[key] = a.split("=", 1)[1]
        elif a.startswith("-") and not a.startswith(("~", "+")):
            raise UserError(f"unknown option {a!r}; options are written key=value", "treepo-lab <command> --help")
        elif not cmd.overrides:
            raise UserError(f"unexpected argument {a!r}", f"usage: {cmd.usage}")
        else:
            overrides.append(a)
    return own, overrides


def load(own: dict, overrides: list[str], default: str = "default"):
    from treepo_lab.config import load_config

    return load_config(own.get("experiment", default), overrides)


def model_dir(own: dict, cfg) -> str | None:
    """The model `checkpoint=` names (a checkpoint dir, a run dir or an MLflow run id), else None: the config's."""
    if "checkpoint" not in own:
        return None
    from treepo_lab.train.run import find_checkpoint

    return str(find_checkpoint(own["checkpoint"]) / "model")


def setup(own: dict, cfg):
    """The model, task, prompts and engine of `cfg` (train/setup.py), with the progress line a command shows."""
    from treepo_lab.train.progress import setup_step
    from treepo_lab.train.setup import build_setup

    given = model_dir(own, cfg)  # a checkpoint that is not there: one line, before the progress line
    with setup_step("loading the model, task and engine"):
        return build_setup(cfg, given)

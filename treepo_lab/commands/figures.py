"""`treepo-lab figures NAME`: paper-style figures and tables (the recipes in analysis/).

    treepo-lab figures fig1 [--sweep NAME | --runs ID ...] [--run-missing] [key=value ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from treepo_lab.commands.base import Command
from treepo_lab.commands.selection import add_selection, select_kwargs


def run(own, overrides, args: list[str]) -> None:
    from treepo_lab.analysis import recipes

    names = recipes.names()
    p = argparse.ArgumentParser(prog="treepo-lab figures", description="Paper-style figures and tables "
                                "(recipes in analysis/), PNG + PDF, tables as Markdown + LaTeX booktabs.")
    p.add_argument("name", choices=names + ["all"], metavar="NAME", help=f"one of: {', '.join(names)}, all")
    add_selection(p, required=False)
    p.add_argument("--run-missing", action="store_true", help="train the registry experiments a recipe lacks first")
    p.add_argument("--seeds", type=int, default=2, help="seeds per missing experiment (with --run-missing)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: reports/figures/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for the runs --run-missing starts")
    a = p.parse_args(args)
    todo = names if a.name == "all" else [a.name]
    for name in todo:
        written, notes = recipes.run_recipe(name, selection=select_kwargs(a), run_missing=a.run_missing,
                                            seeds=a.seeds, overrides=a.overrides,
                                            out_dir=Path(a.out) if a.out else None)
        for n in notes:
            print(f"{name}: note: {n}", file=sys.stderr)
        print(f"{name}: " + (", ".join(str(w) for w in written) if written else "nothing written"))


COMMAND = Command(run, "paper-style figures and tables (recipes in analysis/)",
                  "treepo-lab figures NAME [--sweep NAME | --runs ID ...] [--run-missing] [key=value ...]",
                  raw=True, own_help=True)

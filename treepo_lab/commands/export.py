"""`treepo-lab export`: full metric histories in long format (CSV or Parquet).

    treepo-lab export --sweep demo --format parquet --out demo.parquet
"""
from __future__ import annotations

import argparse
from pathlib import Path

from treepo_lab.commands.base import Command
from treepo_lab.commands.selection import add_selection, select_kwargs


def run(own, overrides, args: list[str]) -> None:
    p = argparse.ArgumentParser(prog="treepo-lab export", description="Full metric histories in long format: "
                                "one row per run x metric x step, params and tags joined.")
    add_selection(p)
    p.add_argument("--format", choices=("csv", "parquet"), default=None, help="default: from --out's suffix, else csv")
    p.add_argument("--out", metavar="FILE", help="default: reports/<name>/<name>.<format>")
    a = p.parse_args(args)
    from treepo_lab.analysis.runset import export, load

    data = load(**select_kwargs(a))
    fmt = a.format or (Path(a.out).suffix.lstrip(".") if a.out and Path(a.out).suffix else "csv")
    out = Path(a.out) if a.out else Path("reports") / data.name / f"{data.name}.{fmt}"
    path = export(data, out, fmt)
    print(f"wrote {len(data.metrics)} rows ({len(data.runs)} runs, {data.metrics['key'].nunique()} metrics) to {path}")


COMMAND = Command(run, "full metric histories in long format (CSV or Parquet)",
                  "treepo-lab export --sweep NAME | --experiment NAME | --runs ID ... [--format csv|parquet] [--out FILE]",
                  raw=True, own_help=True)

"""`treepo-lab`: the command line. Every command takes Hydra overrides (key=value, +key=value, ...); each one
is a module of treepo_lab/commands/.

`treepo-lab <command> --help` explains a command. A user mistake (unknown experiment, bad override or
value, missing file) prints one readable line and a hint that fits it, and exits with status 2; a bug
still shows its traceback. Quiet by default (no MLflow INFO lines, no transformers bars); `-v` anywhere
on the line brings other libraries' output back.
"""
from __future__ import annotations

import os
import sys
import time

from treepo_lab.commands import COMMANDS
from treepo_lab.commands.base import split_args
from treepo_lab.commands.output import configure_output, hint_for, interrupted_line, user_error_line

RANK_REFUSAL_DELAY_S = 5.0  # a refusing rank other than 0 waits this long, so rank 0's line is printed first

USAGE = """usage: treepo-lab [-v] <command> [experiment=<name>] [key=value ...]

commands:
{commands}

`treepo-lab <command> --help` for one command. Overrides use Hydra's grammar (sampler.width=8,
model.path=Qwen/Qwen2.5-0.5B, ~key, +key=value); `treepo-lab show` prints every key.
-v / --verbose shows other libraries' logs and progress bars (MLflow, transformers).
Runs log to MLflow (default sqlite:///mlflow.db here; `treepo-lab ui` opens it); checkpoints go to runs/<run name>/."""


def usage() -> str:
    width = max(map(len, COMMANDS))
    return USAGE.format(commands="\n".join(f"  {n:<{width}}  {c.summary}" for n, c in COMMANDS.items()))


def command_help(name: str) -> str:
    c = COMMANDS[name]
    return f"usage: {c.usage}\n\n{c.summary[0].upper() + c.summary[1:]}.\n{c.details}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in ("-v", "--verbose") for a in argv)
    argv = [a for a in argv if a not in ("-v", "--verbose")]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage() if len(argv) < 2 or argv[1] not in COMMANDS else command_help(argv[1]))
        return 0
    name, args = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"treepo-lab: unknown command {name!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        print("hint: treepo-lab --help", file=sys.stderr)
        return 2
    cmd = COMMANDS[name]
    if any(a in ("-h", "--help") for a in args) and not cmd.own_help:
        print(command_help(name))
        return 0
    configure_output(verbose)
    try:
        own, overrides = split_args(args, cmd) if not cmd.raw else ({}, [])
        status = cmd.run(own, overrides, args)
    except KeyboardInterrupt as stop:  # Ctrl-C: where the run stands, how to go on, no traceback
        if os.environ.get("RANK", "0") == "0":  # one line per run: rank 0's (or the launcher's)
            print(interrupted_line(stop), file=sys.stderr)
        return getattr(stop, "exit_code", 130)  # 143: the launcher of the ranks got SIGTERM
    except SystemExit as stop:  # argparse of report/export/figures/paper: --help (0) or a bad option (2, printed)
        if not cmd.own_help:
            raise
        return stop.code if isinstance(stop.code, int) else 0
    except Exception as err:  # user mistakes: one line + hint; anything else is a bug: traceback
        line = user_error_line(err)
        if line is None:
            raise
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank refuses alike: rank 0 says it
            print(f"treepo-lab {name}: {line}", file=sys.stderr)
            print(f"hint: {hint_for(name, err, line)}", file=sys.stderr)
        else:  # the others leave after it: torchrun stops every rank when the first one exits (seen: no line)
            time.sleep(RANK_REFUSAL_DELAY_S)
        return 2
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())

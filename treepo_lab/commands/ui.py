"""`treepo-lab ui`: the MLflow UI on the project's store, bound to 127.0.0.1, until Ctrl-C."""
from __future__ import annotations

from treepo_lab.commands import output
from treepo_lab.commands.base import Command, load
from treepo_lab.commands.output import UserError


def run(own, overrides, raw):
    from treepo_lab.track.ui import serve_ui

    cfg = load(own, overrides)
    try:
        port = int(own.get("port", 5000))
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise UserError(f"port={own.get('port')!r} is not allowed: an integer in 1..65535", "treepo-lab ui port=5001")
    serve_ui(cfg.tracking.resolved_uri(), port, verbose=output.VERBOSE)


COMMAND = Command(run, "the MLflow UI on the project's store (127.0.0.1, one worker); prints the URL",
                  "treepo-lab ui [port=5000] [tracking.tracking_uri=...]",
                  "Serves the store runs log to (tracking.tracking_uri, $MLFLOW_TRACKING_URI or ./mlflow.db) until Ctrl-C.",
                  own=("experiment", "port"))

"""One sampled rollout tree per group: fetched from the run's logged `trees/*.json` artifacts,
laid out (leaves left to right, depth downwards), coloured by the mean reward of the leaves below each
node, drawn as PNG + PDF for the report and as SVG (segment text on hover) for the HTML page."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.ticker import MaxNLocator
from mlflow import MlflowClient

from treepo_lab.analysis.style import figure, save

CMAP = "cividis"  # sequential and colour-blind safe; reward 0 dark blue, reward 1 yellow


def _quiet_downloads() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bar per tree file


def fetch_tree(client: MlflowClient, run_id: str, cache_dir: Path) -> tuple[dict, str] | None:
    """(first tree of the run's last logged tree file, its artifact path); None when it logged none.
    Artifacts never change once logged, so a downloaded file is reused as is."""
    try:
        files = sorted(a.path for a in client.list_artifacts(run_id, "trees") if a.path.endswith(".json"))
    except Exception:  # noqa: BLE001 - an unreachable or deleted artifact store: no drawing, not a crash
        return None
    if not files:
        return None
    local = Path(cache_dir) / "trees" / run_id / Path(files[-1]).name
    if not local.is_file():
        local.parent.mkdir(parents=True, exist_ok=True)
        _quiet_downloads()
        got = Path(client.download_artifacts(run_id, files[-1], str(local.parent)))
        if got != local and got.is_file():
            got.replace(local)
    trees = json.loads(local.read_text())
    trees = trees if isinstance(trees, list) else [trees]
    return (trees[0], files[-1]) if trees else None


def normalise(tree: dict) -> tuple[dict[int, dict], list[dict]]:
    """Nodes by id ({parent, depth, text}) and leaves ({path, reward}) from the compact tree form the
    tracker logs (id/parent/path) or the full `Tree.to_dict()` form (node_id/parent_id/node_path)."""
    nodes = {}
    for n in tree.get("nodes", []):
        nid = n["id"] if "id" in n else n["node_id"]
        nodes[nid] = {"parent": n.get("parent", n.get("parent_id")), "depth": n["depth"], "text": n.get("text", "")}
    leaves = [{"path": list(lf.get("path", lf.get("node_path", []))), "reward": lf.get("reward")}
              for lf in tree.get("leaves", [])]
    return nodes, leaves


def node_rewards(tree: dict) -> dict[int, float]:
    """Mean reward of the leaves below each node (NaN where no leaf carries a reward)."""
    below: dict[int, list[float]] = {}
    for leaf in normalise(tree)[1]:
        r = leaf["reward"]
        for nid in leaf["path"]:
            below.setdefault(nid, [])
            if r is not None:
                below[nid].append(float(r))
    return {nid: float(np.mean(v)) if v else float("nan") for nid, v in below.items()}


def layout(tree: dict) -> dict[int, tuple[float, int]]:
    """node id -> (x, depth): leaves of the drawing at consecutive x, a parent centred over its children."""
    nodes = normalise(tree)[0]
    children: dict[int | None, list[int]] = {}
    for nid, n in nodes.items():
        parent = n["parent"] if n["parent"] in nodes else None
        children.setdefault(parent, []).append(nid)
    pos: dict[int, tuple[float, int]] = {}
    next_x = [0.0]

    def place(nid: int) -> float:
        kids = sorted(children.get(nid, []))
        if not kids:
            x = next_x[0]
            next_x[0] += 1
        else:
            x = float(np.mean([place(k) for k in kids]))
        pos[nid] = (x, nodes[nid]["depth"])
        return x

    for root in sorted(children.get(None, [])):
        place(root)
    return pos


def tree_figure(tree: dict, title: str, out_stem: Path) -> list[Path]:
    pos, rewards = layout(tree), node_rewards(tree)
    nodes = normalise(tree)[0]
    fig, axes = figure(1, 2.4)
    ax = axes[0, 0]
    cmap = colormaps[CMAP]
    for nid, (x, d) in pos.items():
        parent = nodes[nid]["parent"]
        px, pd_ = pos.get(parent, (x, 0)) if parent is not None else (np.mean([p[0] for p in pos.values()]), 0)
        ax.plot([px, x], [pd_, d], color="0.6", linewidth=0.5, zorder=1, marker="")
    xs = [p[0] for p in pos.values()]
    ds = [p[1] for p in pos.values()]
    r = [rewards.get(nid, np.nan) for nid in pos]
    colors = [cmap(v) if np.isfinite(v) else (0.8, 0.8, 0.8, 1) for v in r]
    ax.scatter(xs, ds, c=colors, s=10, edgecolors="0.2", linewidths=0.3, zorder=2)
    ax.scatter([np.mean(xs) if xs else 0], [0], marker="s", color="0.3", s=12, zorder=2)
    ax.invert_yaxis()
    ax.set_ylabel("depth (segments)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xticks([])
    ax.grid(False)
    ax.set_title(title)
    sm = ScalarMappable(cmap=cmap)
    sm.set_clim(0, 1)
    fig.colorbar(sm, ax=ax, label="mean leaf reward", shrink=0.8)
    return save(fig, out_stem)

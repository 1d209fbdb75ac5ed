"""Drawing a rollout tree: an SVG (and a self-contained HTML page around it) from one tree dict.

Pure functions of the dict (`Tree.to_dict()` or the compact form logged to MLflow), no plotting
library: MLflow's artifact view shows the `.html` file as is, and reports embed the `.svg`.

Layout: the prompt on top, one row per depth (segment), leaves spread evenly left to right in
depth-first order and every node centred over the leaves below it. A node's colour is the mean reward
of the leaves below it (vermillion = low, blue = high, on the tree's own reward range; grey = not scored),
so a glance shows which branches paid off. Hovering a node shows its segment text.
"""
from __future__ import annotations

import html
from collections.abc import Mapping

ROW_H, COL_W, R, MARGIN = 56, 26, 9, 24


def _normalise(tree: Mapping) -> tuple[dict[int, dict], list[dict]]:
    """Nodes by id ({id, parent, depth, text, n_tokens}) and leaves ({path, reward, correct, ...})
    from either the full or the compact tree dict."""
    nodes = {}
    for n in tree.get("nodes", []):
        nid = n["id"] if "id" in n else n["node_id"]
        nodes[nid] = {"id": nid, "parent": n.get("parent", n.get("parent_id")), "depth": n["depth"],
                      "text": n.get("text", ""), "finish_reason": n.get("finish_reason"),
                      "n_tokens": n.get("n_tokens", len(n.get("tokens", [])))}
    leaves = [{"path": list(lf.get("path", lf.get("node_path", []))), "reward": lf.get("reward"),
               "correct": lf.get("correct"), "finish_reason": lf.get("finish_reason"),
               "advantage": lf.get("advantage")} for lf in tree.get("leaves", [])]
    return nodes, leaves


# Okabe-Ito vermillion -> light grey -> blue: a diverging scale that colour-blind readers can tell apart
# (red-to-green cannot); light grey in the middle keeps the node outlines and text readable.
_REWARD_STOPS = ((213, 94, 0), (236, 236, 236), (0, 114, 178))


def reward_colour(value: float | None, lo: float, hi: float) -> str:
    """Vermillion (lo) through light grey to blue (hi); mid grey for None (no leaf below)."""
    if value is None:
        return "#9a9a9a"
    t = 0.5 if hi <= lo else min(1.0, max(0.0, (value - lo) / (hi - lo)))
    a, b, u = (_REWARD_STOPS[0], _REWARD_STOPS[1], t * 2) if t < 0.5 else (_REWARD_STOPS[1], _REWARD_STOPS[2], t * 2 - 1)
    r, g, bl = (round(x + (y - x) * u) for x, y in zip(a, b))
    return f"#{r:02x}{g:02x}{bl:02x}"


def _layout(nodes: dict[int, dict], leaves: list[dict]):
    """x slot of every leaf and node, and the mean reward of the leaves below every node."""
    below: dict[int | None, list[int]] = {None: list(range(len(leaves)))}
    for i, lf in enumerate(leaves):
        for nid in lf["path"]:
            below.setdefault(nid, []).append(i)
    children: dict[int | None, list[int]] = {}
    for nid, n in sorted(nodes.items()):
        children.setdefault(n["parent"], []).append(nid)
    order: list[int] = []  # leaves in depth-first order of their paths

    def visit(nid):
        for c in children.get(nid, []):
            visit(c)
        for i in below.get(nid, []):
            if leaves[i]["path"] and leaves[i]["path"][-1] == nid and i not in order:
                order.append(i)

    visit(None)
    order += [i for i in range(len(leaves)) if i not in order]  # leaves of an empty path
    slot = {i: k for k, i in enumerate(order)}
    x = {nid: sum(slot[i] for i in idx) / len(idx) for nid, idx in below.items() if idx}
    for nid in nodes:  # a node no leaf passes through (a path dropped by min_len)
        if nid not in x:
            parent = nodes[nid]["parent"]
            x[nid] = x.get(parent, 0.0)
    mean = {}
    for nid, idx in below.items():
        rs = [leaves[i]["reward"] for i in idx if leaves[i]["reward"] is not None]
        mean[nid] = sum(rs) / len(rs) if rs else None
    return slot, x, mean


def tree_svg(tree: Mapping) -> str:
    """An SVG drawing of one rollout tree (see the module docstring)."""
    nodes, leaves = _normalise(tree)
    slot, x, mean = _layout(nodes, leaves)
    rewards = [lf["reward"] for lf in leaves if lf["reward"] is not None]
    lo, hi = (min(rewards), max(rewards)) if rewards else (0.0, 1.0)
    depth = max([n["depth"] for n in nodes.values()] or [0])
    width = max(MARGIN * 2 + max(len(leaves), 1) * COL_W, 520)  # room for the colour legend
    height = MARGIN * 2 + (depth + 1) * ROW_H + 30
    px = lambda v: MARGIN + COL_W / 2 + v * COL_W
    py = lambda d: MARGIN + d * ROW_H
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="10">']
    for nid, n in nodes.items():  # edges first, under the nodes
        px0 = px(x.get(n["parent"], x.get(None, 0.0)))
        py0 = py(nodes[n["parent"]]["depth"] if n["parent"] in nodes else 0)
        out.append(f'<line x1="{px0:.1f}" y1="{py0:.1f}" x2="{px(x[nid]):.1f}" y2="{py(n["depth"]):.1f}" '
                   f'stroke="#888" stroke-width="1.2"/>')
    for i, lf in enumerate(leaves):  # leaf markers below the last node of each path
        last = nodes.get(lf["path"][-1]) if lf["path"] else None
        lx, ly = px(slot[i]), py(depth) + ROW_H * 0.6
        if last is not None:
            out.append(f'<line x1="{px(x[last["id"]]):.1f}" y1="{py(last["depth"]):.1f}" x2="{lx:.1f}" '
                       f'y2="{ly - 7:.1f}" stroke="#ccc" stroke-dasharray="2,2"/>')
        mark = {True: "\u2713", False: "\u2717"}.get(lf["correct"], "?")
        tip = f'leaf {i}: reward {lf["reward"]}, {lf["finish_reason"]}, advantage {lf["advantage"]}'
        out.append(f'<g><title>{html.escape(tip)}</title><rect x="{lx - 7:.1f}" y="{ly - 7:.1f}" width="14" '
                   f'height="14" rx="2" fill="{reward_colour(lf["reward"], lo, hi)}" stroke="#333"/>'
                   f'<text x="{lx:.1f}" y="{ly + 3.5:.1f}" text-anchor="middle">{mark}</text></g>')
    root_tip = f'prompt: {tree.get("prompt", tree.get("prompt_text", ""))}'
    out.append(f'<g><title>{html.escape(root_tip)}</title><circle cx="{px(x.get(None, 0.0)):.1f}" cy="{py(0):.1f}" '
               f'r="{R}" fill="{reward_colour(mean.get(None), lo, hi)}" stroke="#333" stroke-width="2"/></g>')
    for nid, n in nodes.items():
        m = mean.get(nid)
        tip = (f'node {nid} (depth {n["depth"]}, {n["n_tokens"]} tokens, mean reward below '
               f'{"n/a" if m is None else f"{m:.2f}"}{", " + n["finish_reason"] if n["finish_reason"] else ""}):\n'
               f'{n["text"]}')
        out.append(f'<g><title>{html.escape(tip)}</title><circle cx="{px(x[nid]):.1f}" cy="{py(n["depth"]):.1f}" '
                   f'r="{R * 0.75:.1f}" fill="{reward_colour(m, lo, hi)}" stroke="#333"/></g>')
    out.append(f'<text x="{MARGIN}" y="{height - 6:.0f}" fill="#555">colour: mean reward of the leaves below '
               f'(vermillion {lo:g} .. blue {hi:g}); hover a node for its segment text</text>')
    out.append("</svg>")
    return "\n".join(out)


def tree_html(tree: Mapping | list[Mapping], title: str = "rollout tree") -> str:
    """A self-contained HTML page: for each tree its prompt, answer, drawing and a table of leaves."""
    trees = [tree] if isinstance(tree, Mapping) else list(tree)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             "<style>body{font-family:sans-serif;margin:16px}pre{white-space:pre-wrap;margin:0}"
             "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:2px 6px;"
             "vertical-align:top}</style></head><body>", f"<h2>{html.escape(title)}</h2>"]
    for k, t in enumerate(trees):
        nodes, leaves = _normalise(t)
        prompt = t.get("prompt", t.get("prompt_text", ""))
        parts.append(f"<h3>tree {k}</h3><p><b>prompt</b></p><pre>{html.escape(prompt)}</pre>"
                     f"<p><b>answer</b> {html.escape(str(t.get('answer')))} &middot; {len(nodes)} segments, "
                     f"{len(leaves)} leaves</p>")
        parts.append(tree_svg(t))
        parts.append("<table><tr><th>leaf</th><th>reward</th><th>correct</th><th>finish</th><th>response</th></tr>")
        for i, lf in enumerate(leaves):
            text = "".join(nodes[n]["text"] for n in lf["path"] if n in nodes)
            parts.append(f"<tr><td>{i}</td><td>{lf['reward']}</td><td>{lf['correct']}</td>"
                         f"<td>{html.escape(str(lf['finish_reason']))}</td><td><pre>{html.escape(text)}</pre></td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)

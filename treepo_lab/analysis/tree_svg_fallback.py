"""Placeholder tree drawing (SVG with segment text on hover) until the tracking engineer's
tree_drawing.py lands on main; same call: tree_svg(tree_dict) -> str."""
from __future__ import annotations

import html

import numpy as np
from matplotlib import colormaps, colors

from treepo_lab.analysis.trees import CMAP, layout, node_rewards


def tree_svg(tree: dict, width: int = 640, height: int = 260) -> str:
    pos, rewards = layout(tree), node_rewards(tree)
    nodes = {n["node_id"]: n for n in tree.get("nodes", [])}
    if not pos:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="40"><text x="4" y="20">empty tree</text></svg>'
    max_x = max(p[0] for p in pos.values()) or 1
    max_d = max(p[1] for p in pos.values()) or 1
    sx = lambda x: 20 + (width - 40) * x / max_x
    sy = lambda d: 20 + (height - 40) * d / max_d
    root_x = sx(np.mean([p[0] for p in pos.values()]))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    for nid, (x, d) in pos.items():
        parent = nodes[nid]["parent_id"]
        px, pd_ = (sx(pos[parent][0]), sy(pos[parent][1])) if parent in pos else (root_x, sy(0))
        parts.append(f'<line x1="{px:.1f}" y1="{pd_:.1f}" x2="{sx(x):.1f}" y2="{sy(d):.1f}" stroke="#999" stroke-width="1"/>')
    cmap = colormaps[CMAP]
    for nid, (x, d) in pos.items():
        r = rewards.get(nid, float("nan"))
        fill = colors.to_hex(cmap(r)) if np.isfinite(r) else "#cccccc"
        tip = f"node {nid}, depth {d}, mean reward {r:.2f}\n{nodes[nid].get('text', '')}"
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(d):.1f}" r="5" fill="{fill}" stroke="#333">'
                     f"<title>{html.escape(tip)}</title></circle>")
    parts.append(f'<rect x="{root_x - 5:.1f}" y="{sy(0) - 5:.1f}" width="10" height="10" fill="#555">'
                 f"<title>{html.escape(str(tree.get('prompt_text', 'prompt')))}</title></rect></svg>")
    return "".join(parts)

"""The tree drawing: well-formed SVG, nodes coloured by the mean reward of the leaves below, text on hover."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from treepo_lab.track.tree_drawing import reward_colour, tree_svg

SVG = "{http://www.w3.org/2000/svg}"

# root -> 1 -> (2: leaf +1, 3: leaf -1); root -> 4 -> leaf +1, leaf +1 (two leaves end at node 4)
TREE = {
    "prompt": "1+2=?",
    "nodes": [
        {"id": 1, "parent": None, "depth": 1, "text": "first <seg> & co"},
        {"id": 2, "parent": 1, "depth": 2, "text": "left"},
        {"id": 3, "parent": 1, "depth": 2, "text": "right"},
        {"id": 4, "parent": None, "depth": 1, "text": "other"},
    ],
    "leaves": [
        {"path": [1, 2], "reward": 1.0, "correct": True},
        {"path": [1, 3], "reward": -1.0, "correct": False},
        {"path": [4], "reward": 1.0, "correct": True},
        {"path": [4], "reward": 1.0, "correct": True},
    ],
}


def _node_fills(svg: str) -> dict[str, str]:
    """title text of each node circle -> its fill colour."""
    root = ET.fromstring(svg)  # raises on malformed XML (e.g. unescaped segment text)
    out = {}
    for g in root.iter(f"{SVG}g"):
        title, circle = g.find(f"{SVG}title"), g.find(f"{SVG}circle")
        if title is not None and circle is not None:
            out[title.text.split(" (")[0].split(":")[0]] = circle.get("fill")
    return out


def test_nodes_are_coloured_by_the_mean_reward_below_and_carry_their_text():
    svg = tree_svg(TREE)
    fills = _node_fills(svg)
    assert fills["node 2"] == reward_colour(1.0, -1.0, 1.0) == "#0072b2"  # blue: high
    assert fills["node 3"] == reward_colour(-1.0, -1.0, 1.0) == "#d55e00"  # vermillion: low
    assert fills["node 1"] == reward_colour(0.0, -1.0, 1.0)  # mean of +1 and -1
    assert fills["node 4"] == reward_colour(1.0, -1.0, 1.0)
    assert fills["prompt"] == reward_colour(0.5, -1.0, 1.0)  # mean of all four leaves
    assert "first &lt;seg&gt; &amp; co" in svg  # segment text on hover, escaped


def test_colour_scale_runs_vermillion_grey_blue():
    assert [reward_colour(v, 0.0, 1.0) for v in (0.0, 0.5, 1.0)] == ["#d55e00", "#ececec", "#0072b2"]
    assert reward_colour(0.25, 0.0, 1.0) == "#e0a576"  # halfway between vermillion and grey
    assert reward_colour(-5.0, 0.0, 1.0) == "#d55e00" and reward_colour(5.0, 0.0, 1.0) == "#0072b2"  # clamped
    assert reward_colour(None, 0.0, 1.0) == "#9a9a9a"
    assert reward_colour(3.0, 1.0, 1.0) == reward_colour(0.5, 0.0, 1.0)  # a flat range is the middle

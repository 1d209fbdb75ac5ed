"""Artifacts a person reads in MLflow's artifact view: compact rollout trees and evaluation samples.

A tree's full JSON (`Tree.to_dict`, what `treepo-lab rollout` writes) keeps every token id, log-prob
and entropy so it can be loaded back; logged every few steps it is thousands of lines of numbers. The
logged form keeps what a reader looks at: the decoded text of every node and leaf, token counts, the
mean log-prob, why a path stopped, reward, correctness and advantage; one node or leaf per line.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


def _mean(xs) -> float | None:
    xs = [x for x in xs or [] if x is not None and math.isfinite(x)]
    return round(sum(xs) / len(xs), 4) if xs else None


def compact_tree(tree: Mapping) -> dict:
    """The reader's form of one tree dict (`Tree.to_dict()`); accepts an already compact one as is."""
    if tree.get("format") == "compact":
        return dict(tree)
    nodes = {n["node_id"]: n for n in tree.get("nodes", [])}
    out_nodes = [{
        "id": n["node_id"], "parent": n["parent_id"], "depth": n["depth"], "n_tokens": len(n.get("tokens", [])),
        "mean_logprob": _mean(n.get("logprobs")), "finish_reason": n.get("finish_reason"),
        **({"from_fallback": True} if n.get("from_fallback") else {}), "text": n.get("text", ""),
    } for n in nodes.values()]
    leaves = []
    for lf in tree.get("leaves", []):
        path = list(lf["node_path"])
        leaves.append({
            "path": path, "n_tokens": sum(len(nodes[i].get("tokens", [])) for i in path),
            "finish_reason": lf.get("finish_reason"), "reward": lf.get("reward"), "correct": lf.get("correct"),
            "advantage": lf.get("advantage"), "fallback_count": lf.get("fallback_count", 0),
            "text": "".join(nodes[i].get("text", "") for i in path),
        })
    meta = {k: v for k, v in (tree.get("meta") or {}).items() if not isinstance(v, (list, dict))}
    return {"format": "compact", "prompt": tree.get("prompt_text", ""), "answer": tree.get("answer"),
            "n_prompt_tokens": len(tree.get("prompt_ids", [])), "meta": meta, "nodes": out_nodes, "leaves": leaves}


def compact_json(trees: list[Mapping]) -> str:
    """JSON with one node or leaf per line (valid JSON, `json.loads` reads it back)."""
    def one(t: Mapping) -> str:
        head = {k: v for k, v in t.items() if k not in ("nodes", "leaves")}
        head_s = json.dumps(head, ensure_ascii=False)[:-1]
        body = [f'"{key}": [\n' + ",\n".join("   " + json.dumps(x, ensure_ascii=False) for x in t[key]) + "\n  ]"
                for key in ("nodes", "leaves")]
        return " " + head_s + ",\n  " + ",\n  ".join(body) + "}"
    return "[\n" + ",\n".join(one(compact_tree(t)) for t in trees) + "\n]\n"


def eval_sample_rows(records: list[Mapping], step: int) -> dict[str, list[Any]]:
    """Columns of the evaluation-samples table: one row per sampled response (filterable in the UI)."""
    cols: dict[str, list[Any]] = {k: [] for k in ("step", "problem_id", "prompt", "answer", "sample",
                                                  "response", "correct", "length", "majority_correct")}
    for r in records:
        lengths = r.get("length") or [None] * len(r["responses"])
        for i, (text, ok, n) in enumerate(zip(r["responses"], r["correct"], lengths)):
            for key, value in (("step", int(step)), ("problem_id", str(r.get("id"))), ("prompt", r["prompt"]),
                               ("answer", str(r["answer"])), ("sample", i), ("response", text),
                               ("correct", bool(ok)), ("length", n), ("majority_correct", bool(r.get("maj_correct")))):
                cols[key].append(value)
    return cols

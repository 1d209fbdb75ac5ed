"""Ratios, the best row, the targets, and the printed table of benchmarks/rollout.py."""
from __future__ import annotations


def _div(a, b):
    return a / b if a is not None and b else None


def _sequential_ref(rows: list[dict], engine: str) -> dict | None:
    """The baseline: the sequential sampler at d=1, l=budget on this engine, i.e. one engine call per
    rollout, as a non-tree sampler runs. (Not the fastest sequential row: on the HF engine they all do
    the same work, and picking the minimum of several noisy timings would flatter the baseline.)"""
    seq = [r for r in rows if r["engine"] == engine and r["kind"] == "sequential"]
    return next((r for r in seq if r["d"] == 1), min(seq, key=lambda r: r["wall_s"]) if seq else None)


def add_ratios(rows: list[dict]) -> None:
    gen = next((r for r in rows if r["kind"] == "generate"), None)
    for r in rows:
        ref = _sequential_ref(rows, r["engine"])
        same = next((s for s in rows if s["engine"] == r["engine"] and s["kind"] == "sequential"
                     and (s["d"], s["l"]) == (r["d"], r["l"])), None)
        hf = next((s for s in rows if s["engine"] == "hf" and (s["kind"], s["d"], s["l"], s["b"])
                   == (r["kind"], r["d"], r["l"], r["b"])), None)
        r["seq_ref"] = ref["name"] if ref else None
        r["tok_vs_seq"] = _div(r["processed"], ref and ref["processed"])
        r["wall_vs_seq"] = _div(r["wall_s"], ref and ref["wall_s"])
        r["wall_vs_seq_same_dxl"] = _div(r["wall_s"], same and same["wall_s"])
        r["wall_vs_generate"] = _div(r["wall_s"], gen and gen["wall_s"])
        r["wall_vs_hf"] = _div(r["wall_s"], hf and hf["wall_s"]) if r["engine"] != "hf" else None
        # the TreePO paper (arXiv 2508.17445): throughput gains over the baseline (TokenPS counts cached prompt tokens)
        r["traj_ps_vs_seq"] = _div(r["traj_per_s"], ref and ref["traj_per_s"])
        r["token_ps_vs_seq"] = _div(r["paper_tokens_per_s"], ref and ref["paper_tokens_per_s"])


def targets(best: dict) -> dict:
    """The issue's targets at the best d x l (benchmark goals, not tests)."""
    tok = best["tok_vs_seq"]
    goals = {
        "tree tokens <= 0.6x sequential": (tok, 0.6),
        "tree wall <= (token ratio + 0.1)x sequential": (best["wall_vs_seq"], tok + 0.1),
        "tree wall <= 0.5x generate(num_return_sequences=w)": (best["wall_vs_generate"], 0.5),
        "recompute ratio <= 1.05": (best["recompute_ratio"], 1.05),
        "overhead share <= 15%": (best["overhead_share"], 0.15),
    }
    return {k: {"value": v, "limit": lim, "pass": None if v is None else bool(v <= lim)}
            for k, (v, lim) in goals.items()}


def _headline(best: dict) -> dict:
    return {
        "tree_vs_sequential_token_ratio": best["tok_vs_seq"],
        "tree_vs_sequential_wall_ratio": best["wall_vs_seq"],
        "tree_vs_generate_wall_ratio": best["wall_vs_generate"],
        "recompute_ratio": best["recompute_ratio"],
        "overhead_share": best["overhead_share"],
        "cache_hit_share": best["cache_hit_share"],
        "traj_ps_ratio": best["traj_ps_vs_seq"],
        "token_ps_ratio": best["token_ps_vs_seq"],
    }


def forward_split(best: dict, ref: dict | None) -> dict:
    """What limits the wall ratio: the forward time of the two rows as a fixed cost per call plus a
    cost per processed token (solved from the two rows; None when their token counts are equal).
    With the same number of calls on both sides, the fixed part is paid in full by the tree."""
    out = {"forward_vs_seq": _div(best["forward_s"], ref and ref["forward_s"]),
           "forward_ms_per_call": _div(1e3 * best["forward_s"], best["forward_calls"]),
           "fixed_ms_per_call": None, "forward_us_per_token": None}
    if ref and ref["processed"] != best["processed"] and best["forward_calls"] and ref["forward_calls"]:
        # forward_s = calls * a + processed * c, both rows
        (n1, t1, f1), (n2, t2, f2) = ((r["forward_calls"], r["processed"], r["forward_s"]) for r in (best, ref))
        det = n1 * t2 - n2 * t1
        if det:
            out["fixed_ms_per_call"] = 1e3 * (f1 * t2 - f2 * t1) / det
            out["forward_us_per_token"] = 1e6 * (n1 * f2 - n2 * f1) / det
    return out


def _init_label(init) -> str:
    return "b0=b" if init is None else "b0={}-{}".format(*init)


def summarize(rows: list[dict], meta: dict) -> dict:
    add_ratios(rows)
    engine = "vllm" if any(r["engine"] == "vllm" for r in rows) else "hf"
    b = 2 if 2 in meta["branch"] else meta["branch"][0]
    trees = [r for r in rows if r["engine"] == engine and r["kind"] == "tree" and r["b"] == b]
    best = min(trees, key=lambda r: r["wall_vs_seq"])
    # the best row of each initial divergence too: More-Init and Fixed-Init differ in token saving
    by_init = {}
    for init in dict.fromkeys(r["init_div"] for r in trees):
        top = min((r for r in trees if r["init_div"] == init), key=lambda r: r["wall_vs_seq"])
        by_init[_init_label(init)] = {"best_row": top["name"], **_headline(top), "targets": targets(top)}
    return {
        "best_row": best["name"],
        "best_by": f"lowest tree/sequential wall ratio among the {engine} tree rows with b={b}; "
                   f"sequential = {best['seq_ref']}",
        **_headline(best),
        "targets": targets(best),
        "forward_split": forward_split(best, next((r for r in rows if r["name"] == best["seq_ref"]), None)),
        "best_by_init_div": by_init,
        "meta": meta,
        "rows": rows,
    }


def _f(x, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def print_report(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if Console().is_terminal else 220)  # a pipe must not wrap the table
    meta, rows = result["meta"], result["rows"]
    vllm = any(r["engine"] == "vllm" for r in rows)
    t = Table(title=f"rollout compute ({meta.get('device', 'cpu')}): {meta['prompts']} prompts x w={meta['width']}, budget d*l="
                    f"{meta['budget']}, b={meta['branch']}, medians of "
                    f"{meta['repeats']}, {meta['threads']} thread(s), load {meta['load_average']}")
    cols = ["row", "wall s", "decoded", "prefill", "traj/s", "tok/seq", "wall/seq", "wall/seq same dxl",
            "wall/gen", "overhead", "recompute", "resp len", "capped"]
    cols += ["cached", "hit share", "wall/hf"] if vllm else []
    if meta["mode"] == "gpu":
        cols += ["TrajPS x", "TokenPS x"]
    for c in cols:
        t.add_column(c, justify="left" if c == "row" else "right")
    for r in rows:
        best = " *" if r["name"] == result["best_row"] else ""
        cells = [r["name"] + best, _f(r["wall_s"], "{:.3f}"), _f(r["decoded"], "{:.0f}"),
                 _f(r["prefill"], "{:.0f}"), _f(r["traj_per_s"], "{:.0f}"), _f(r["tok_vs_seq"]),
                 _f(r["wall_vs_seq"]), _f(r["wall_vs_seq_same_dxl"]), _f(r["wall_vs_generate"]),
                 _f(r["overhead_share"], "{:.0%}"), _f(r["recompute_ratio"], "{:.3f}"),
                 _f(r["resp_len"], "{:.0f}"), _f(r["capped"], "{:.0%}")]
        if vllm:
            cells += [_f(r["cached"], "{:.0f}"), _f(r["cache_hit_share"], "{:.0%}"), _f(r["wall_vs_hf"])]
        if meta["mode"] == "gpu":
            cells += [_f(r["traj_ps_vs_seq"]), _f(r["token_ps_vs_seq"])]
        t.add_row(*cells)
    console.print(t)
    console.print("ratios: against the sequential sampler at 1 x budget on the same engine (one call per "
                  "rollout) and generate(num_return_sequences=w); wall/seq same dxl: the "
                  "sequential sampler at the row's own d x l; overhead: time outside model forward (vLLM: "
                  "outside LLM.generate) / rollout time; recompute: tokens processed / unique tree tokens; "
                  "capped: leaves that hit the length or depth budget")
    console.print(f"best row (*): {result['best_row']} ({result['best_by']})", markup=False)
    _print_targets(console, result["targets"])
    fs = result.get("forward_split") or {}
    console.print(f"  forward time: tree/sequential {_f(fs.get('forward_vs_seq'), '{:.3f}')}, "
                  f"{_f(fs.get('forward_ms_per_call'))} ms per call; split over both rows: "
                  f"{_f(fs.get('fixed_ms_per_call'))} ms fixed per call + "
                  f"{_f(fs.get('forward_us_per_token'), '{:.0f}')} us per token", markup=False)
    for label, sub in result["best_by_init_div"].items():
        if sub["best_row"] != result["best_row"]:
            console.print(f"best {label} row: {sub['best_row']}", markup=False)
            _print_targets(console, sub["targets"])
    if meta.get("vllm_skipped"):
        console.print("[yellow]vLLM rows skipped: vLLM is not importable in this environment[/]")


def _print_targets(console, tgs: dict) -> None:
    for name, tg in tgs.items():
        verdict = "n/a " if tg["pass"] is None else ("PASS" if tg["pass"] else "MISS")
        style = {"PASS": "green", "MISS": "red"}.get(verdict, "yellow")
        value = _f(tg["value"], "{:.3f}")
        console.print(f"  [{style}]{verdict}[/] {name}: {value} (limit {tg['limit']:.3f})")

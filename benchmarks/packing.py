"""Policy-update benchmark: tree packing against the flat per-leaf update (issue 12).

One policy update = old log-probs over every leaf + the PPO epochs (forward, backward, optimizer step),
as the trainer runs it. Both sides run in ONE process on the same model, the same sampled trees and the
same advantages, alternating which goes first over several repeats; the table shows medians. Rows:
  tree w=16 b=2 DxL   trees from the real tree sampler (HF engine, embedded warm-started model)
  grpo DxL            GRPO's independent samples (the sequential sampler): they share the prompt only
Columns (tree / flat ratios):
  forwarded tokens    tokens through the model: unique trie tokens of every pack (a prefix repeated in
                      two packs counts twice) against the flat rows without padding (`padded`: with it)
  update wall         wall time of the whole update
  peak memory         peak resident-set growth during the update: glibc heap trimmed, Linux VmHWM reset
                      (/proc/self/clear_refs), then VmHWM - VmRSS before (RSS, so it includes the
                      allocator's own slack); `saved` = bytes autograd saved for backward (exact)
  grad diff           max over parameter tensors of |g_tree - g_flat| / |g_flat|, float32, one backward
The JSON's top-level keys report the w=16, b=2, 8x16 row. The machine is shared: the load average
before and after is recorded; timings are medians of noisy runs.

  python benchmarks/packing.py             # full (a few minutes on 2 CPU cores)
  python benchmarks/packing.py --smoke     # seconds: random tiny model, small sizes (plumbing)
  python benchmarks/packing.py --device cuda   # on a GPU: peak memory is then CUDA's peak allocation
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

HEADLINE = ("tree", 2, 8, 16)  # kind, b, d, l of the row the top-level keys report


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=16, help="w, leaves per prompt")
    p.add_argument("--branch", type=int, default=2, help="b of the tree rows")
    p.add_argument("--prompts", type=int, default=8, help="prompts per update (trainer.prompts_per_step)")
    p.add_argument("--grid", default="16x8,8x16,4x32,2x64", help="d x l of the tree rows")
    p.add_argument("--grpo-grid", default="8x16", help="d x l of the GRPO rows ('' for none)")
    p.add_argument("--budget", type=int, default=None, help="tree: tokens per packed forward "
                   "(default: trainer.pack_tokens)")
    p.add_argument("--micro", type=int, default=None, help="flat: leaves per forward (default: "
                   "trainer.micro_batch_size)")
    p.add_argument("--epochs", type=int, default=1, help="PPO epochs (trainer.ppo_epochs)")
    p.add_argument("--kl", type=float, default=0.0, help="loss.kl_coef (> 0 adds the reference forward)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where the model runs (auto: cuda if available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/packing.json"))
    p.add_argument("--smoke", action="store_true", help="tiny random model and sizes: checks the plumbing")
    a = p.parse_args(argv)
    if a.smoke:
        a.width, a.prompts, a.repeats, a.grid, a.grpo_grid = 4, 2, 1, "4x8", "4x8"
    a.grid = [tuple(int(x) for x in g.split("x")) for g in a.grid.split(",") if g]
    a.grpo_grid = [tuple(int(x) for x in g.split("x")) for g in a.grpo_grid.split(",") if g]
    return a


# ---- memory -------------------------------------------------------------------------------------

_libc = ctypes.CDLL("libc.so.6")


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class PeakRSS:
    """Peak growth of the resident set over a block: freed heap handed back first, peak counter reset.
    On CUDA (`cuda=True`) the peak growth of CUDA's allocated memory instead (host RSS says nothing there)."""

    def __init__(self, cuda: bool = False):
        self.cuda = cuda

    def __enter__(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
            return self
        _libc.malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        self.before = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self.before) / 2**20
            return
        self.mib = (_status_kib("VmHWM") - self.before) / 1024


class SavedBytes:
    """Bytes autograd keeps for backward (each storage once): the activation memory of a forward."""

    def __init__(self):
        import torch

        self.seen, self.bytes, self._torch = set(), 0, torch

    def pack(self, t):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in self.seen:
            self.seen.add(key)
            self.bytes += key[1]
        return t

    def __enter__(self):
        self._ctx = self._torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


# ---- the workload -------------------------------------------------------------------------------

def load(args):
    """The embedded warm-started model (or, --smoke, a random tiny one), its tokenizer, the prompts."""
    from rollout import load_prompts, smoke_model_dir, warm_model_dir

    from treepo_lab.models.load import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(smoke_model_dir() if args.smoke else warm_model_dir(600), device=args.device)
    args.prompts_file = None  # held-out arithmetic problems, as in the rollout benchmark
    return model, tok, [tok(t)["input_ids"] for t in load_prompts(args, tok)]


class Workload:
    """Sampled leaves of one row, their advantages, and the model state every update starts from.

    `update(side)` is the trainer's update (train/update.py) with trainer.packing = side: the plan of
    mini-batches and micro-batches (flat: `micro` leaves; tree: packs of `budget` trie tokens), old
    (and reference) log-probs over the first epoch's micro-batches, then `ppo_update` with AdamW."""

    def __init__(self, args, model, tok, prompts, kind, d, l):
        import torch

        from treepo_lab.algo.config import LossConfig
        from treepo_lab.engines.factory import build_engine
        from treepo_lab.rollout.config import SamplerConfig
        from treepo_lab.rollout.sampler import build_sampler
        from treepo_lab.train.config import TrainerConfig
        from treepo_lab.train.update import LeafBatch

        self.args, self.model = args, model
        cfg = SamplerConfig(kind=kind, width=args.width, max_depth=d, segment_len=l, branch=args.branch,
                            fallback_block_size=l, seed=args.seed)
        decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
        res = build_sampler(cfg, build_engine("hf", model, tok), decode, tok.eos_token_id).rollout(prompts)
        self.unique_tree_tokens = res.metrics()["rollout/unique_tree_tokens"]
        self.batch = LeafBatch.from_trees(res.trees, tok.pad_token_id)
        self.seqs = list(zip(self.batch.prompts, self.batch.responses))
        g = torch.Generator().manual_seed(args.seed)
        # one advantage per leaf (the update's cost does not depend on the values)
        self.adv = [torch.full((len(r),), float(torch.randn((), generator=g))) for r in self.batch.responses]
        self.tc = TrainerConfig(ppo_epochs=args.epochs)
        self.budget = args.budget or self.tc.pack_tokens
        self.micro = args.micro or self.tc.micro_batch_size
        self.max_response_len = d * l
        self.loss_cfg = LossConfig(kl_coef=args.kl)
        self.state = copy.deepcopy(model.state_dict())
        self.ref = copy.deepcopy(model).eval().requires_grad_(False) if args.kl > 0 else None

    def plan(self, side: str, epochs: int):
        import torch

        from treepo_lab.train.update import plan_minibatches

        gen = torch.Generator().manual_seed(self.args.seed)
        n_prompts = max(self.batch.groups) + 1  # mini_batch_prompts null: one mini-batch of every prompt
        return plan_minibatches(self.batch, epochs, n_prompts, self.micro, gen,
                                pack_tokens=self.budget if side == "tree" else None)

    def forwarded(self, side: str, micro_batches) -> tuple[int, int]:
        """(tokens forwarded in one pass over every leaf, the same without padding)."""
        from treepo_lab.train.packing import build_pack

        if side == "tree":
            n = sum(build_pack(self.seqs, m).n_tokens for m in micro_batches)
            return n, n
        padded = sum(len(m) * max(len(self.seqs[j][0]) + len(self.seqs[j][1]) for j in m) for m in micro_batches)
        return padded, sum(len(p) + len(r) for p, r in self.seqs)

    def update(self, side: str) -> dict:
        import torch

        from treepo_lab.algo.loss import ppo_loss
        from treepo_lab.train.update import FORWARDS, first_epoch, leaf_logprobs, ppo_update

        model, forward = self.model, FORWARDS[side]
        model.load_state_dict(self.state)
        opt = torch.optim.AdamW(model.parameters(), lr=self.tc.lr, weight_decay=self.tc.weight_decay)
        plan = self.plan(side, self.tc.ppo_epochs)
        first = first_epoch(plan)
        model.eval()
        old = leaf_logprobs(model, self.batch, first, 1.0, forward)
        ref = leaf_logprobs(self.ref, self.batch, first, 1.0, forward) if self.ref is not None else None
        ppo_update(model, opt, self.batch, plan, old, self.adv, ppo_loss, self.loss_cfg, temperature=1.0,
                   max_response_len=self.max_response_len, grad_clip=self.tc.grad_clip, ref_logp=ref,
                   forward=forward)
        padded, unpadded = self.forwarded(side, first)
        passes = 1 + (self.ref is not None) + self.tc.ppo_epochs
        return {"forwarded": padded * passes, "forwarded_unpadded": unpadded * passes,
                "forwards": len(first) * passes}

    def gradient(self, side: str) -> list:
        """The mini-batch gradient at the starting weights (SGD with lr 0 leaves them unchanged), old
        log-probs 0.1 below the current ones: ratios of 1.1, inside the clip range."""
        import torch

        from treepo_lab.algo.loss import ppo_loss
        from treepo_lab.train.update import FORWARDS, first_epoch, leaf_logprobs, ppo_update

        model, forward = self.model, FORWARDS[side]
        model.load_state_dict(self.state)
        plan = self.plan(side, 1)
        old = [x - 0.1 for x in leaf_logprobs(model, self.batch, first_epoch(plan), 1.0, forward)]
        ppo_update(model, torch.optim.SGD(model.parameters(), lr=0.0), self.batch, plan, old, self.adv, ppo_loss,
                   self.loss_cfg, temperature=1.0, max_response_len=self.max_response_len, grad_clip=1e9,
                   forward=forward)
        return [p.grad.detach().clone() for p in model.parameters()]

    def grad_diff(self) -> float:
        gt, gf = self.gradient("tree"), self.gradient("flat")
        return max(((a - b).norm() / b.norm().clamp(min=1e-30)).item() for a, b in zip(gt, gf))


def main(argv=None) -> dict:
    args = parse_args(argv)
    from treepo_lab.commands.output import configure_output

    configure_output(verbose=False)  # other libraries' INFO lines and progress bars stay hidden
    import torch

    torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    model, tok, prompts = load(args)
    cuda = next(model.parameters()).is_cuda
    args.device = "cuda" if cuda else "cpu"  # auto resolved, as the JSON's meta records it
    mem_kind = "CUDA" if cuda else "RSS"
    rows_spec = [("tree", args.branch, d, l) for d, l in args.grid] + [("grpo", 1, d, l) for d, l in args.grpo_grid]
    results = []
    for kind, b, d, l in rows_spec:
        wl = Workload(args, model, tok, prompts, "tree" if kind == "tree" else "sequential", d, l)
        runs = {"tree": [], "flat": []}
        wl.update("tree")  # warm-up: first calls allocate lazily
        wl.update("flat")
        for r in range(args.repeats):
            for side in (("flat", "tree") if r % 2 == 0 else ("tree", "flat")):
                with PeakRSS(cuda) as mem:
                    t0 = time.perf_counter()
                    stats = wl.update(side)
                    if cuda:
                        torch.cuda.synchronize()
                    wall = time.perf_counter() - t0
                runs[side].append({"wall_s": wall, "peak_rss_mib": mem.mib, **stats})
        med = {side: {k: statistics.median(x[k] for x in v) for k in v[0]} for side, v in runs.items()}
        with SavedBytes() as st:
            wl.gradient("tree")
        with SavedBytes() as sf:
            wl.gradient("flat")
        grad_diff = wl.grad_diff()
        t, f = med["tree"], med["flat"]
        row = {"name": f"{kind} w={args.width} b={b} {d}x{l}" if kind == "tree" else f"grpo w={args.width} {d}x{l}",
               "kind": kind, "b": b, "d": d, "l": l, "leaves": len(wl.seqs),
               "tree": t, "flat": f, "wall_s_all": {s: [round(x["wall_s"], 4) for x in v] for s, v in runs.items()},
               "unique_tree_tokens": wl.unique_tree_tokens,
               "forwarded_token_ratio": t["forwarded"] / f["forwarded_unpadded"],
               "forwarded_token_ratio_padded": t["forwarded"] / f["forwarded"],
               "update_wall_ratio": t["wall_s"] / f["wall_s"],
               "peak_memory_ratio": t["peak_rss_mib"] / f["peak_rss_mib"] if f["peak_rss_mib"] > 0 else None,
               "saved_for_backward_ratio": st.bytes / sf.bytes,
               "max_rel_grad_diff": grad_diff}
        row["wall_target"] = row["forwarded_token_ratio"] + 0.15
        results.append(row)
        print(f"{row['name']:<24} tokens {row['forwarded_token_ratio']:.3f}  wall {row['update_wall_ratio']:.3f} "
              f"(target <= {row['wall_target']:.3f})  peak {mem_kind} {row['peak_memory_ratio'] or float('nan'):.3f}  "
              f"saved {row['saved_for_backward_ratio']:.3f}  grad diff {grad_diff:.2e}", flush=True)
    head = next((r for r in results if (r["kind"], r["b"], r["d"], r["l"]) == HEADLINE), results[0])
    out = {k: head[k] for k in ("forwarded_token_ratio", "update_wall_ratio", "peak_memory_ratio",
                                "max_rel_grad_diff")}
    out.update({"headline_row": head["name"], "rows": results,
                "load_average": {"before": [round(x, 2) for x in load_before],
                                 "after": [round(x, 2) for x in os.getloadavg()]},
                "meta": {**{k: v for k, v in vars(args).items() if k not in ("grid", "grpo_grid")},
                         "grid": [f"{d}x{l}" for d, l in args.grid],
                         "grpo_grid": [f"{d}x{l}" for d, l in args.grpo_grid],
                         "memory": "peak CUDA allocation growth (torch.cuda.max_memory_allocated)" if cuda else
                         "peak RSS growth (Linux VmHWM after /proc/self/clear_refs, heap trimmed)"}})
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"headline ({head['name']}): forwarded tokens {out['forwarded_token_ratio']:.3f}x flat, update wall "
          f"{out['update_wall_ratio']:.3f}x, peak memory {out['peak_memory_ratio']}, grad diff "
          f"{out['max_rel_grad_diff']:.2e}; load {out['load_average']}\nwrote {path}")
    return out


if __name__ == "__main__":
    main()

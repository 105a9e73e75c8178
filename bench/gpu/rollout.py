"""GPU benchmark 2: rollout tokens/s inside the pipeline (RolloutGroup, a Ray actor) vs bare LLM.generate.

    python bench/gpu/rollout.py [--model 0.5b] [--prompts 64] [--n 8] [--max-tokens 512] [--repeats 3] [--cuda-graphs]

Both sides build `vllm.LLM` from the same arguments (workers.rollout.engine_kwargs/engine_env:
bf16, gpu_memory_utilization 0.85, eager unless --cuda-graphs) and generate the same prompts
(random letters, 32 tokens) with the same per-prompt seeds, n samples each, temperature 1.0, up
to --max-tokens (a random model stops at EOS now and then, the same way on both sides). The bare
engine runs in this process; the pipeline's is one RolloutEngine actor driven through
RolloutGroup.generate (Ray round trip and result conversion included). One untimed warm-up call
each, then --repeats timed calls; tokens/s = generated tokens / wall seconds of the calls.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def rollout_config(args):
    from rl_pipeline.config import RolloutConfig

    return RolloutConfig(num_engines=1, temperature=1.0, max_tokens=args.max_tokens, gpu_memory_utilization=0.85,
                         enforce_eager=not args.cuda_graphs, max_model_len=1024, gpus_per_engine=1)


def run_bare(model: str, args) -> dict:
    import os

    from rl_pipeline.workers.rollout import engine_env, engine_kwargs, sampling_kwargs

    cfg = rollout_config(args)
    os.environ.update(engine_env(cfg, "cuda"))
    from vllm import LLM, SamplingParams, TokensPrompt

    t0 = time.perf_counter()
    llm = LLM(**engine_kwargs(model, cfg, 0, "cuda"))
    start_s = time.perf_counter() - t0
    prompts = common.random_prompts(args.prompts, 32)
    settings = sampling_kwargs(cfg, args.n, None, None, None)
    rates = []
    for call in range(args.repeats + 1):
        seed = 1000 * call  # RolloutGroup.generate's seeds: seed + i * n for prompt i
        params = [SamplingParams(**settings, seed=seed + i * args.n, logprobs=0, include_stop_str_in_output=True)
                  for i in range(len(prompts))]
        t = time.perf_counter()
        out = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        seconds = time.perf_counter() - t
        tokens = sum(len(o.token_ids) for r in out for o in r.outputs)
        if call:
            rates.append((tokens, seconds))
    return {"tokens": sum(t for t, _ in rates), "seconds": sum(s for _, s in rates), "start_s": start_s}


def run_rlp(model: str, args) -> dict:
    import ray

    from rl_pipeline.workers.rollout import RolloutGroup

    ray.init(include_dashboard=False, log_to_driver=True)
    t0 = time.perf_counter()
    group = RolloutGroup.start(model, rollout_config(args), seed=0)
    start_s = time.perf_counter() - t0
    prompts = common.random_prompts(args.prompts, 32)
    rates = []
    for call in range(args.repeats + 1):
        t = time.perf_counter()
        out = group.generate(prompts, n=args.n, seed=1000 * call)
        seconds = time.perf_counter() - t
        if call:
            rates.append((sum(len(c.token_ids) for g in out for c in g), seconds))
    group.shutdown()
    ray.shutdown()
    return {"tokens": sum(t for t, _ in rates), "seconds": sum(s for _, s in rates), "start_s": start_s,
            "vllm_start_s": group.infos[0]["start_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="0.5b", choices=sorted(common.MODELS))
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cuda-graphs", action="store_true", help="enforce_eager=False (slower start)")
    parser.add_argument("--work", default="/tmp/rlp-gpu-bench")
    parser.add_argument("--system", help=argparse.SUPPRESS)
    args = parser.parse_args()
    common.gpu_env()
    work = Path(args.work)
    model = str(work / f"model-{args.model}")
    if args.system:
        result = {"bare": run_bare, "rlp": run_rlp}[args.system](model, args)
        print("RESULT " + json.dumps(result), flush=True)
        return
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench/gpu/rollout.py needs a CUDA device")
    common.header(f"rollout: {args.model}, {args.prompts} prompts x n={args.n}, max {args.max_tokens} new tokens, "
                  f"{'CUDA graphs' if args.cuda_graphs else 'eager'}, {args.repeats} timed calls after 1 warm-up")
    common.build_model(work, args.model)
    results = {}
    for system in ("bare", "rlp"):
        cmd = [sys.executable, __file__, "--system", system] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("system", "cuda_graphs")]
        cmd += ["--cuda-graphs"] if args.cuda_graphs else []
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode or not lines:
            tail = (out.stdout + out.stderr).strip().splitlines()[-15:]
            print(f"{system}: FAILED (exit {out.returncode})\n  " + "\n  ".join(tail), flush=True)
            continue
        results[system] = json.loads(lines[-1][7:])
    names = {"bare": "bare vllm.LLM.generate", "rlp": "RolloutGroup.generate (Ray actor)"}
    base = results["bare"]["tokens"] / results["bare"]["seconds"] if "bare" in results else None
    print("| system | generated tokens | seconds | tokens/s | vs bare | engine start s |\n|---|---:|---:|---:|---:|---:|")
    for key, r in results.items():
        rate = r["tokens"] / r["seconds"]
        print(f"| {names[key]} | {r['tokens']:,} | {r['seconds']:.2f} | {rate:,.0f} | "
              f"{rate / base if base else float('nan'):.3f} | {r['start_s']:.1f} |")
    if base and "rlp" in results:
        ratio = results["rlp"]["tokens"] / results["rlp"]["seconds"] / base
        print(f"target >= 0.9: {'met' if ratio >= 0.9 else 'MISSED'} ({ratio:.3f})", flush=True)


if __name__ == "__main__":
    main()

"""Rollout benchmark: vLLM start time, generate throughput, weight sync, recovery from a kill.

    python bench/rollout.py [--prompts 64] [--n 8] [--max-tokens 32] [--engines 1 2]

All on the tiny model (built in a temp folder) and a local Ray instance of 2 CPUs. Prints one
table: RolloutGroup with 1 and 2 engines vs a standalone `vllm.LLM.generate` of the same
prompts and sampling settings in this process (same constructor arguments), the weight-sync
time, and the recovery time when an engine is killed in the middle of a generate call.
Numbers on a shared 2-core machine are noisy: the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import tempfile
import threading
import time


def tokens(results) -> int:
    return sum(len(c.token_ids) for completions in results for c in completions)


def timed_generate(fn, repeats: int) -> tuple[float, int]:
    """Best tokens/s over `repeats` calls after one warm-up call."""
    fn()
    best, count = 0.0, 0
    for _ in range(repeats):
        start = time.perf_counter()
        count = fn()
        best = max(best, count / (time.perf_counter() - start))
    return best, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--engines", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Ray gives actors with fractional CPUs OMP_NUM_THREADS=1; the standalone engine in this
    # process gets the same, or on a busy machine OpenMP threads fight and it runs ~10x slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import ray
    import torch

    from rl_pipeline.config import RolloutConfig
    from rl_pipeline.models.tiny import build_tiny_model
    from rl_pipeline.workers.rollout import RolloutGroup, engine_env, engine_kwargs

    model_dir = str(build_tiny_model(os.path.join(tempfile.mkdtemp(prefix="rlp-bench-"), "model")))
    prompts = [[2] + [20 + (i * 7 + j) % 60 for j in range(6)] for i in range(args.prompts)]
    cfg = RolloutConfig(temperature=1.0, max_tokens=args.max_tokens, cpus_per_engine=0.25)
    rows: list[tuple[str, str]] = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    for count in args.engines:
        group_start = time.perf_counter()
        group = RolloutGroup.start(model_dir, cfg.model_copy(update={"num_engines": count}), seed=0)
        ready = time.perf_counter() - group_start
        starts = ", ".join(f"{i['start_s']:.1f}" for i in group.infos)
        rows.append((f"{count} engine(s): group ready / vLLM start per engine", f"{ready:.1f} s / {starts} s"))
        rate, count_tokens = timed_generate(lambda: tokens(group.generate(prompts, n=args.n)), args.repeats)
        rows.append((f"{count} engine(s): generate {args.prompts}x{args.n}, {count_tokens} tokens", f"{rate:,.0f} tokens/s"))
        if count == max(args.engines):
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(model_dir)
            buffer = io.BytesIO()
            torch.save(model.state_dict(), buffer)
            blob = buffer.getvalue()
            times = [group.load_weights(ray.put(blob))["sync/seconds"] for _ in range(3)]
            rows.append((f"load_weights {len(blob) / 1e6:.1f} MB into {count} engine(s), best of 3", f"{min(times):.3f} s"))
            # Deliberate fault: kill the last engine while a generate call is in flight.
            result: dict = {}
            worker = threading.Thread(target=lambda: result.update(out=group.generate(prompts, n=args.n)))
            start = time.perf_counter()
            worker.start()
            time.sleep(0.5)
            ray.kill(group.engines[-1], no_restart=True)
            worker.join()
            complete = len(result.get("out", [])) == len(prompts)
            rows.append(
                ("generate with an engine killed mid-call (restart + re-send)",
                 f"{time.perf_counter() - start:.1f} s, restarts={group.restarts}, all results: {complete}")
            )
        group.shutdown()
    ray.shutdown()

    # Standalone vLLM in this process with the engines' own constructor arguments.
    os.environ.update(engine_env(cfg, "cpu"))
    from vllm import LLM, SamplingParams, TokensPrompt

    start = time.perf_counter()
    llm = LLM(**engine_kwargs(model_dir, cfg, 0, "cpu"))
    rows.append(("standalone vllm.LLM: start (vllm already imported)", f"{time.perf_counter() - start:.1f} s"))
    params = SamplingParams(n=args.n, temperature=1.0, max_tokens=args.max_tokens, logprobs=0)
    token_prompts = [TokensPrompt(prompt_token_ids=p) for p in prompts]

    def standalone() -> int:
        outputs = llm.generate(token_prompts, params, use_tqdm=False)
        return sum(len(o.token_ids) for r in outputs for o in r.outputs)

    rate, count_tokens = timed_generate(standalone, args.repeats)
    rows.append((f"standalone vllm.LLM: generate {args.prompts}x{args.n}, {count_tokens} tokens", f"{rate:,.0f} tokens/s"))

    width = max(len(name) for name, _ in rows)
    print(
        f"\nrollout benchmark (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, torch threads {torch.get_num_threads()})"
    )
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    main()

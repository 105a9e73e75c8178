"""Distillation benchmark: samples/s of the `rlp distill` pipeline vs a bare `vllm.LLM.generate`
of the same prompts, and the pipeline with 1 and 2 engines.

    .venv/bin/python bench/distill.py [--problems 512] [--n 4] [--max-tokens 32] [--shard-size 128] [--engines 1 2]

The expert is the randomly initialised tiny model (built in a temp folder), so nearly every
sample runs to --max-tokens and the work per sample is fixed. Each problem is generated in both
kinds (with and without the system prompt), n samples each. The pipeline run is `run_distill`
(what `rlp distill` calls) after a warm-up run, with engines already started: it includes
input checks, the math reward service, curation and writing the jsonl shards (every sample is
kept, so every row is written). The bare engine gets the same prompt token ids, the same
sampling settings (no per-request seeds, distill's default), the engine actor's constructor arguments, and
OMP_NUM_THREADS=1 as Ray gives the actor (without it, OpenMP threads fight on a busy machine
and it runs ~10x slower). Numbers on a shared 2-core machine are noisy: the load average is
printed beside them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and bench/rewards.py would shadow the
# `rewards` package (here and in the Ray workers, which inherit the driver's script folder).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def recipe_dict(model: str, task: Path, out: Path, args, engines: int) -> dict:
    return {
        "name": "bench-distill", "output_dir": str(out), "model": {"path": model},
        "data": {"train": {"path": str(task / "train.jsonl"), "limit": args.problems}, "max_length": 128},
        "rollout": {"num_engines": engines, "temperature": 1.0, "max_tokens": args.max_tokens,
                    "cpus_per_engine": 0.25},
        "distill": {"expert": model, "system_prompt": "Check the sum digit by digit, then answer.",
                    "samples_per_prompt": args.n, "threshold": 0.0, "drop_truncated": False, "dedupe": False,
                    "min_response_tokens": 0, "id_column": "id", "shard_size": args.shard_size},
        "rewards": {"functions": [{"name": "math", "kwargs": {"answer_after": None}}]},
        "tracking": {"tensorboard": False},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=512)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=128)
    parser.add_argument("--engines", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # what Ray gives the engine actors

    import ray

    from rl_pipeline.config import parse_recipe
    from rl_pipeline.data.synthetic import write_task
    from rl_pipeline.models.tiny import build_tiny_model
    from rl_pipeline.pipelines.distill import DistillActors, check_distill_inputs, run_distill
    from rl_pipeline.workers.rollout import engine_env, engine_kwargs

    work = Path(tempfile.mkdtemp(prefix="rlp-bench-distill-"))
    model = str(build_tiny_model(work / "model"))
    write_task(work / "task", {"train": args.problems, "eval": 8, "test": 8}, digits=2, ops="+", seed=0)
    samples = args.problems * 2 * args.n
    rows: list[tuple[str, str]] = []
    rates: dict[str, float] = {}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    for engines in args.engines:
        recipe = parse_recipe(recipe_dict(model, work / "task", work / f"out{engines}", args, engines))
        begin = time.perf_counter()
        actors = DistillActors.start(recipe)
        rows.append((f"pipeline, {engines} engine(s): engines + reward service ready", f"{time.perf_counter() - begin:.1f} s"))
        warm = recipe.model_copy(deep=True)
        warm.data.train.limit = args.shard_size
        run_distill(warm, output=work / f"warm{engines}", actors=actors)
        begin = time.perf_counter()
        result = run_distill(recipe, output=work / f"run{engines}", actors=actors)
        wall = time.perf_counter() - begin
        actors.shutdown()
        rates[f"pipeline{engines}"] = samples / wall
        rows.append((f"pipeline, {engines} engine(s): {samples} samples, {result.rows} rows written",
                     f"{samples / wall:,.1f} samples/s ({wall:.1f} s)"))
        run = result.stats["run"]
        rows.append((f"pipeline, {engines} engine(s): driver waits for engines / scores + writes",
                     f"{run['wait_for_generation_s']:.1f} s / {run['score_and_write_s']:.1f} s"))
    ray.shutdown()

    # The bare engine: the same prompts (both kinds, shard by shard in one call), sampling and seeds.
    recipe = parse_recipe(recipe_dict(model, work / "task", work / "bare", args, 1))
    inputs = check_distill_inputs(recipe)
    cfg, d = inputs.rollout, recipe.distill
    os.environ.update(engine_env(cfg, "cpu"))
    from vllm import LLM, SamplingParams, TokensPrompt

    llm = LLM(**engine_kwargs(model, cfg, 0, "cpu"))
    prompts = [TokensPrompt(prompt_token_ids=p.prompt_ids[kind]) for kind in d.kinds for p in inputs.problems]

    params = SamplingParams(n=args.n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                            logprobs=0, include_stop_str_in_output=True)  # what RolloutEngine.generate asks
    llm.generate(prompts[: args.shard_size], params, use_tqdm=False)  # warm-up
    for label, batch in (("bare vllm.LLM.generate, one call", len(prompts)), ("bare, shard-sized calls", 2 * args.shard_size)):
        begin = time.perf_counter()
        for start in range(0, len(prompts), batch):
            chunk = prompts[start:start + batch]
            llm.generate(chunk, params, use_tqdm=False)
        wall = time.perf_counter() - begin
        rates[label] = samples / wall
        rows.append((f"{label}: {samples} samples", f"{samples / wall:,.1f} samples/s ({wall:.1f} s)"))

    bare = rates["bare vllm.LLM.generate, one call"]
    for engines in args.engines:
        rows.append((f"pipeline {engines} engine(s) / bare one call", f"{rates[f'pipeline{engines}'] / bare:.2f}"))
    if len(args.engines) > 1:
        a, b = min(args.engines), max(args.engines)
        rows.append((f"pipeline {b} engines / {a} engine(s)", f"{rates[f'pipeline{b}'] / rates[f'pipeline{a}']:.2f}"))
    width = max(len(name) for name, _ in rows)
    print(f"\ndistill benchmark: {args.problems} problems x 2 kinds x n={args.n}, max_tokens {args.max_tokens}, "
          f"shards of {args.shard_size} (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    main()

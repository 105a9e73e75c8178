"""The ``code`` reward: run a completion's Python program against test cases, in a sandbox.

The program is the last fenced code block of the completion (```python ... ``` preferred),
else the text after ``</think>``, else the whole completion. Tests come from the column
``tests`` (name configurable with ``tests_column``), per row one of:

- stdin/stdout pairs: ``[{"input": "1 2\\n", "output": "3"}, ...]`` or
  ``{"inputs": [...], "outputs": [...]}``: one sandboxed run per pair; a pair passes when the
  program exits 0 and its output matches (whitespace-separated tokens compared). The expected
  output never enters the sandbox: the caller compares.
- assert-style tests: a list of strings or one string of Python. Top-level ``assert``
  statements are the tests, other statements (imports, helpers) are setup. The setup and the
  expected values never enter the program's process and the verdict is computed where the
  program cannot reach it: see ``rewards.code_asserts`` for the design and for exactly which
  attacks it stops and which it does not, and ``rewards.code_split`` for how names resolve.
- JSON strings of either form are decoded first.

Score = fraction of tests passed, in [0, 1] by construction; ``None`` for a row without tests.
Each run is confined by ``rewards.sandbox`` (limits from the keyword arguments; ``memory_mb``
bounds the program's whole process tree: each of at most ``processes`` processes gets
``memory_mb / processes``, so ``processes=1`` gives a program that never forks all of it); runs
go in parallel over threads.

Fail closed: the reward refuses to run (raises :class:`rewards.sandbox.SandboxUnavailable`)
where the sandbox cannot isolate the program (see :func:`rewards.sandbox.isolation_problem`),
unless ``allow_unisolated=True`` (trusted local experiments only). The recipe check does the
same before any actor starts, naming ``rewards.functions[i]``.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rewards import register
from rewards.code_asserts import score_asserts
from rewards.sandbox import SandboxLimits, ensure_isolation, run_python

logger = logging.getLogger(__name__)

FENCE = re.compile(r"```([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.S)


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
    memory_mb: int = 1024,
    processes: int = 8,
    per_test_s: float = 2.0,
    max_parallel: int | None = None,
    allow_unisolated: bool = False,
    **columns: Any,
) -> list[float | None]:
    """Fraction of each row's tests that its completion's program passes."""
    if not allow_unisolated:
        ensure_isolation("reward 'code'")
    if tests_column not in columns:
        raise ValueError(
            f"reward 'code' needs a {tests_column!r} column (stdin/stdout pairs or asserts); "
            f"columns are: {', '.join(sorted(columns)) or '(none)'}"
        )
    limits = SandboxLimits(wall_s=timeout_s, cpu_s=cpu_s, memory_bytes=memory_mb << 20, processes=processes)
    isolated = not allow_unisolated
    jobs = []  # (row, index of test in row, callable)
    totals: list[int | None] = []
    for row, (completion, raw) in enumerate(zip(completions, columns[tests_column])):
        program, tests = extract_program(completion), parse_tests(raw)
        totals.append(None if tests is None else _count(tests))
        if isinstance(tests, AssertSuite) and tests.tests:
            jobs.append((row, lambda p=program, t=tests: run_asserts(p, t, limits, per_test_s, isolated)))
        elif isinstance(tests, list):
            for case in tests:
                jobs.append((row, lambda p=program, c=case: float(run_io_case(p, c, limits, isolated))))
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


def run_io_case(program: str, case: IOCase, limits: SandboxLimits, isolated: bool = True) -> bool:
    """Whether the program, fed ``case.stdin``, exits 0 printing ``case.expected``."""
    result = run_python(program, stdin=case.stdin, limits=limits, require_isolation=isolated)
    return result.ok and result.stdout.split() == case.expected.split()


def run_asserts(program: str, suite: AssertSuite, limits: SandboxLimits, per_test_s: float,
                isolated: bool = True) -> float:
    """Number of the suite's asserts that pass, judged outside the program's reach."""
    return score_asserts(program, suite.setup, suite.tests, limits, per_test_s, isolated)


code_reward.runs_model_code = True  # the recipe check refuses it where the sandbox cannot isolate

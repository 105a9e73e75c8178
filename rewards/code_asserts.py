"""Assert-style tests whose verdict the tested program cannot reach.

An assert such as ``assert add(1, 2) == 3`` is split, before anything runs, into

- *probes*: the smallest parts that need the program (here ``add(1, 2)``): a call of one of
  its names with its arguments, an attribute or item chain on such a call, a bare name of its;
- a *verdict*: the rest of the assert with every probe replaced by a placeholder
  (``_v0 == 3``).

Only the probes and the test's setup statements go into the program's sandbox. There the
harness runs the program (as module ``solution``), then the setup, then evaluates each probe
under its own time limit and writes its value, encoded by ``rewards._code_values``, on a
channel the program may also write to. Whatever arrives there is treated as the program's
*claim* about its values: it is decoded into plain data (exact built-in types only) by the
trusted caller, and the verdicts are evaluated outside the program's reach: in the caller when
the verdict uses only literals, comparisons, arithmetic without ``*``/``**`` and a few pure
built-ins (``len``, ``sorted``...), otherwise in a second sandbox run that holds the setup and
the verdicts but not the program. The score is ``passed / len(tests)`` over a list of booleans
the caller computed, so it lies in [0, 1] by construction.

Stopped, because nothing the program can do changes a comparison it does not perform and the
expected values are never in its process or on its disk: objects that compare equal to
anything (including subclasses of int, str, list, dict with rigged ``__eq__``/``__hash__``:
not encodable, the test fails), walks through frames, ``gc``, ``inspect`` or
``/proc/self/mem`` (there is no nonce and no expected value to find), early exits of any kind
(a probe without a value fails), fake result lines on any descriptor (a claimed value is
compared like a returned one, and only indices of real probes are read), patched builtins,
``AssertionError`` or libraries, and reading or rewriting the files beside it.

Not stopped: a program that computes or hard-codes the right values for the inputs it is
called with (e.g. one that recognises a probe's arguments from the prompt): that is what a
test of this form measures. Asserts whose program calls sit inside a comprehension or a
lambda (``all(f(i) == i for i in ...)``) cannot be split and are rejected with an error naming
the test; a test that does not parse counts as failed. A value the program returns that is not plain data
(an instance of its own class) fails the test even where a real ``assert`` would pass.
"""

from __future__ import annotations

import ast
import builtins
import json
from dataclasses import dataclass
from pathlib import Path

from rewards import _code_values
from rewards.sandbox import SandboxLimits, run

CODEC_SOURCE = Path(_code_values.__file__).read_text()
BUILTIN_NAMES = frozenset(dir(builtins))
SAFE_FUNCTIONS = {name: getattr(builtins, name) for name in (  # none allocates by a value's size
    "abs", "all", "any", "bool", "dict", "float", "frozenset", "int", "isinstance", "len", "list", "max",
    "min", "repr", "round", "set", "sorted", "str", "sum", "tuple", "type", "complex")}
SAFE_NODES = (
    ast.Expression, ast.Compare, ast.BoolOp, ast.UnaryOp, ast.BinOp, ast.Constant, ast.List, ast.Tuple,
    ast.Set, ast.Dict, ast.Name, ast.Load, ast.Call, ast.keyword, ast.Subscript, ast.Slice,
    ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd, ast.Add, ast.Sub, ast.Div, ast.FloorDiv,  # no * ** %: sizes
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Is, ast.IsNot, ast.In, ast.NotIn,
)

PROBE_HARNESS = r'''
import json, os, signal, sys
sys.path.insert(0, os.getcwd())  # -I leaves the script's folder off the path
from _code_values import encode

def _harness():
    with open("probes.json") as f:
        spec = json.load(f)
    out = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the program's prints do not reach the channel by accident
    def on_alarm(signum, frame):
        raise TimeoutError("probe took too long")
    signal.signal(signal.SIGALRM, on_alarm)
    namespace = {"__name__": "solution"}
    try:
        with open("main.py") as f:
            program = compile(f.read(), "main.py", "exec")
        signal.setitimer(signal.ITIMER_REAL, spec["per_test_s"])
        exec(program, namespace)
        exec(compile(spec["setup"], "tests_setup.py", "exec"), namespace)
        signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException:
        signal.setitimer(signal.ITIMER_REAL, 0)
        spec["probes"] = []  # no value for any probe: every test fails
    for index, probe in enumerate(spec["probes"]):
        try:
            signal.setitimer(signal.ITIMER_REAL, spec["per_test_s"])
            value = eval(compile(probe, f"probe_{index}.py", "eval"), namespace)
            signal.setitimer(signal.ITIMER_REAL, 0)
            line = json.dumps(encode(value))
        except BaseException as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            line = json.dumps(["raised", type(exc).__name__])
        os.write(out, f"{index}\t{line}\n".encode())

_harness()
'''

VERDICT_HARNESS = r'''
import json, os, sys
sys.path.insert(0, os.getcwd())  # -I leaves the script's folder off the path
from _code_values import decode

with open("verdicts.json") as f:
    spec = json.load(f)
namespace = {"__name__": "tests"}
results = []
try:
    exec(compile(spec["setup"], "tests_setup.py", "exec"), namespace)
except BaseException:
    spec["verdicts"] = []
for source, values in spec["verdicts"]:
    try:
        scope = dict(namespace, **{f"_v{k}": decode(v) for k, v in enumerate(values)})
        results.append(bool(eval(compile(source, "verdict.py", "eval"), scope)))
    except BaseException:
        results.append(False)
print(json.dumps(results + [False] * (len(spec["verdicts"]) - len(results))))
'''


class UnsplittableTest(ValueError):
    """An assert whose program calls cannot be separated from its expected values."""


@dataclass(frozen=True)
class SplitTest:
    """One assert: the probe expressions the program's sandbox evaluates, and the verdict
    expression (placeholders ``_v0``, ``_v1``... for the probes' values)."""

    probes: tuple[str, ...]
    verdict: str
    safe: bool  # the verdict can be evaluated in this process (plain data, pure built-ins only)


@dataclass(frozen=True)
class SplitSuite:
    program_setup: str  # every setup statement: run after the program, before the probes
    trusted_setup: str  # the statements that need nothing of the program: for sandboxed verdicts
    tests: tuple[SplitTest, ...]

    @property
    def probes(self) -> list[str]:
        return [probe for test in self.tests for probe in test.probes]


def split_suite(setup: str, tests: tuple[str, ...]) -> SplitSuite:
    """Split every assert of a suite; UnsplittableTest names a test that cannot be split."""
    statements = ast.parse(setup).body if setup.strip() else []
    trusted, trusted_names = [], set()
    for statement in statements:  # a setup statement is trusted if it needs no program name
        if _free_names(statement) <= BUILTIN_NAMES | trusted_names:
            trusted.append(statement)
            trusted_names |= _bound_names(statement)
    program_names = lambda names: names - BUILTIN_NAMES - trusted_names  # noqa: E731
    split = tuple(_split_test(source, program_names) for source in tests)
    return SplitSuite(setup, "\n".join(ast.unparse(s) for s in trusted), split)


def _split_test(source: str, program_names) -> SplitTest:
    try:
        node = ast.parse(source).body[0]
    except (SyntaxError, IndexError):
        node = None
    if not isinstance(node, ast.Assert):
        return SplitTest((), "False", True)  # counted, and fails
    local = _bound_names(node.test)
    probes: list[str] = []

    def depends(expr: ast.AST) -> bool:
        return bool(program_names(_free_names(expr)) - local)

    class Cut(ast.NodeTransformer):
        def generic_visit(self, expr):
            if not isinstance(expr, ast.expr) or not depends(expr) or not _is_probe(expr, depends):
                return super().generic_visit(expr)
            if _free_names(expr) & local:
                raise UnsplittableTest(
                    f"test {source!r:.120}: it calls the program inside a comprehension or lambda; "
                    "write one assert per case")
            probes.append(ast.unparse(expr))
            return ast.copy_location(ast.Name(f"_v{len(probes) - 1}", ast.Load()), expr)

    verdict = ast.fix_missing_locations(ast.Expression(Cut().visit(node.test)))
    safe = all(isinstance(n, SAFE_NODES) for n in ast.walk(verdict)) and all(
        n.id in SAFE_FUNCTIONS or n.id.startswith("_v") for n in ast.walk(verdict) if isinstance(n, ast.Name))
    return SplitTest(tuple(probes), ast.unparse(verdict), safe)


def _is_probe(expr: ast.expr, depends) -> bool:
    """A probe is a program name, or a call/attribute/item whose callee or object needs the
    program (so ``f(x)``, ``Solution().run(x)``, ``f(x)[0]``; not ``len(f(x))``)."""
    if isinstance(expr, ast.Name):
        return True
    if isinstance(expr, ast.Call):
        return depends(expr.func)
    if isinstance(expr, (ast.Attribute, ast.Subscript)):
        return depends(expr.value)
    return False


def _free_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _bound_names(node: ast.AST) -> set[str]:
    """Names a statement or expression binds: assignments, imports, defs, parameters, targets."""
    names = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            names.add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, ast.alias):
            names.add((n.asname or n.name).split(".")[0])
        elif isinstance(n, ast.arg):
            names.add(n.arg)
    return names


def run_probes(program: str, suite: SplitSuite, limits: SandboxLimits, per_test_s: float,
               require_isolation: bool) -> list[object]:
    """The program's claimed value of every probe (``_code_values.RAISED`` marks a failure)."""
    probes = suite.probes
    spec = {"setup": suite.program_setup, "probes": probes, "per_test_s": per_test_s}
    files = {"main.py": program, "harness.py": PROBE_HARNESS, "probes.json": json.dumps(spec),
             "_code_values.py": CODEC_SOURCE}
    result = run(["harness.py"], limits=limits, files=files, require_isolation=require_isolation)
    return read_claims(result.stdout, len(probes))


def read_claims(text: str, count: int) -> list[object]:
    """Decode ``index<TAB>value`` lines: the first valid line of each index 0..count-1 wins;
    anything else (other indices, junk, malformed values) is ignored."""
    claims: list[object] = [_code_values.RAISED] * count
    seen: set[int] = set()
    for line in text.splitlines():
        index, _, encoded = line.partition("\t")
        if not index.isdigit() or int(index) >= count or int(index) in seen:
            continue
        try:
            raw = json.loads(encoded)
            if isinstance(raw, list) and raw[:1] == [_code_values.RAISED]:
                continue
            claims[int(index)] = (raw, _code_values.decode(raw))
            seen.add(int(index))
        except (ValueError, RecursionError):
            continue
    return claims


def judge(suite: SplitSuite, claims: list[object], limits: SandboxLimits, require_isolation: bool) -> list[bool]:
    """One verdict per test, computed where the program cannot reach."""
    verdicts: list[bool | None] = []
    sandboxed: list[tuple[int, str, list]] = []
    start = 0
    for test in suite.tests:
        mine, start = claims[start:start + len(test.probes)], start + len(test.probes)
        if not all(isinstance(claim, tuple) for claim in mine):  # a probe without a valid value
            verdicts.append(False)
        elif test.safe:
            verdicts.append(_evaluate_here(test.verdict, [value for _, value in mine]))
        else:
            verdicts.append(None)
            sandboxed.append((len(verdicts) - 1, test.verdict, [raw for raw, _ in mine]))
    if sandboxed:
        for (index, _, _), verdict in zip(sandboxed, _evaluate_sandboxed(suite, sandboxed, limits, require_isolation)):
            verdicts[index] = verdict
    return [v is True for v in verdicts]


def _evaluate_here(verdict: str, values: list[object]) -> bool:
    scope = {**SAFE_FUNCTIONS, **{f"_v{k}": value for k, value in enumerate(values)}}
    try:
        return bool(eval(compile(verdict, "verdict.py", "eval"), {"__builtins__": {}}, scope))
    except Exception:  # noqa: BLE001 - a verdict that raises is a failed test
        return False


def _evaluate_sandboxed(suite: SplitSuite, verdicts: list[tuple[int, str, list]], limits: SandboxLimits,
                        require_isolation: bool) -> list[bool]:
    spec = {"setup": suite.trusted_setup, "verdicts": [[source, raw] for _, source, raw in verdicts]}
    files = {"harness.py": VERDICT_HARNESS, "verdicts.json": json.dumps(spec), "_code_values.py": CODEC_SOURCE}
    result = run(["harness.py"], limits=limits, files=files, require_isolation=require_isolation)
    try:
        decided = json.loads(result.stdout)
    except ValueError:
        return [False] * len(verdicts)
    return [v is True for v in decided][:len(verdicts)] + [False] * max(0, len(verdicts) - len(decided))

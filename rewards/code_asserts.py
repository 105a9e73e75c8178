"""Assert-style tests whose verdict the tested program cannot reach.

Each assert is split before anything runs (``rewards.code_split``, which says exactly how names
resolve) into *probes*, the smallest expressions that need the program (``add(_a0, 2)``),
*inputs*, the test-side values those pass to the program (``_a0`` is setup's ``K``), and a
*verdict*, the rest of the assert over the probes' values (``_v0 == 3``). Then, per completion:

1. inputs: a sandbox without the program runs the tests' setup and encodes the inputs
   (``rewards._code_values``); cached per suite, so a group of completions pays once. An input
   that is not plain data refuses the test (:class:`UnsplittableTest` names it);
2. probes: the program's sandbox runs the program (as module ``solution``), the setup's imports
   and its program statements (``s = Solution()``), then each probe under its own time limit, and
   writes each value, encoded, on a channel the program may also write to. The tests' setup and
   their expected values are never in that process: only the inputs are;
3. verdicts: whatever arrived is the program's *claim*: decoded by the trusted caller into plain
   data (exact built-in types, bounded cost), then every comparison, method call on a returned
   value and library call is evaluated outside the program's process: in the caller when the
   verdict uses only literals, comparisons, ``+``/``-``, items, a few pure built-ins (``len``,
   ``sorted``...) and a few methods of plain values or of ``math`` (``.startswith``,
   ``math.isclose``), each linear in its values' size; otherwise in a second sandbox that holds
   the setup and the verdicts but not the program.

The score is ``passed / len(tests)`` over booleans the caller computed, in [0, 1] by
construction. A test in which no value came from the program (all its probes were builtins the
program does not define, or it has none: ``assert pow(2, 3) == 8`` with no ``pow`` of the
program's) fails: it does not measure the program.

Stopped, because nothing the program can do changes a comparison it does not perform and the
expected values are never in its process or on its disk: objects that compare equal to
anything (including subclasses of plain types with rigged ``__eq__``, ``startswith``...: not
encodable, the test fails), a class named like the tested function, walks through frames,
``gc``, ``inspect`` or ``/proc/self/mem``, reading the tests' setup (``E0``, a reference
helper: not in its process), early exits of any kind (a probe without a value fails), fake or
malformed result lines on any descriptor (only ASCII indices of real probes are read), patched
builtins, ``AssertionError`` or libraries (``math.isclose`` runs in the verdict), values built
to cost the caller time (hash collisions, huge ints: refused by the decoder), and reading or
rewriting the files beside it.

Not stopped: a program that computes or hard-codes the right values for the inputs it is
called with (e.g. one that recognises a probe's arguments from the prompt): that is what a
test of this form measures. Asserts whose program calls sit inside a comprehension or a
lambda, setup helpers that call the program, and arguments that are not plain data are refused
with an error naming the test; a test that does not parse counts as failed. A value the program
returns that is not plain data (an instance of its own class) fails the test even where a real
``assert`` would pass, and so does a plain-type method called on a lowercase factory's object
(``make_stack().pop()``); a capitalised name called in a test (``Greet(x).startswith(..)``) is
taken for the program's class, whose methods run in its process, and so is a bare name of the
program's (``solver.solve(3)``). A builtin-named call in a verdict (``len(f(x))``) is the builtin
even where the program defines that name. Ints cross up to ``MAX_INT_HEX`` hex digits (about
79,000 decimal digits); a bigger one fails its test.
"""

from __future__ import annotations

import ast
import builtins
import functools
import json
import math
import re
import types
from pathlib import Path

from rewards import _code_values
from rewards.code_split import SplitSuite, SplitTest, UnsplittableTest, split_suite
from rewards.sandbox import SandboxLimits, run

__all__ = ["UnsplittableTest", "judge", "read_claims", "run_probes", "score_asserts", "split_suite"]

CODEC_SOURCE = Path(_code_values.__file__).read_text()
ABSENT = "absent"  # a conditional probe whose builtin the program does not define
INDEX = re.compile(r"[0-9]{1,9}", re.ASCII)
SAFE_FUNCTIONS = {name: getattr(builtins, name) for name in ("abs", "all", "any", "bool", "dict", "float", "frozenset", "int", "isinstance",
                               "len", "list", "max", "min", "repr", "round", "set", "sorted", "str", "sum",
                               "tuple", "type", "complex")}  # none allocates by a value's size
SAFE_METHODS = frozenset((  # of plain values; none allocates beyond a constant times the value's size
    "startswith", "endswith", "upper", "lower", "strip", "lstrip", "rstrip", "split", "rsplit", "splitlines",
    "isdigit", "isalpha", "isalnum", "isspace", "isupper", "islower", "istitle", "title", "capitalize",
    "casefold", "swapcase", "count", "index", "find", "rfind", "join", "keys", "values", "items", "get", "copy",
    "real", "imag", "bit_length", "is_integer"))
SAFE_MATH = types.SimpleNamespace(**{name: getattr(math, name) for name in (  # `math.<name>` in a local verdict
    "isclose", "floor", "ceil", "trunc", "fabs", "sqrt", "isnan", "isinf", "isfinite", "pi", "e", "tau", "inf", "nan")})
SAFE_NODES = (  # no * ** %: sizes; no / //: quadratic on big ints
    ast.Expression, ast.Compare, ast.BoolOp, ast.UnaryOp, ast.BinOp, ast.Constant, ast.List, ast.Tuple,
    ast.Set, ast.Dict, ast.Name, ast.Load, ast.Call, ast.keyword, ast.Subscript, ast.Slice, ast.Attribute,
    ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd, ast.Add, ast.Sub,
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Is, ast.IsNot, ast.In, ast.NotIn,
)

PROBE_HARNESS = r'''
import json, os, signal, sys
sys.path.insert(0, os.getcwd())  # -I leaves the script's folder off the path
from _code_values import decode, encode

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
        for k, raw in enumerate(spec["inputs"]):  # the values the tests pass to the program
            if raw is not None:
                namespace[f"_a{k}"] = decode(raw)
        exec(compile(spec["setup"], "tests_setup.py", "exec"), namespace)
        signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException:
        signal.setitimer(signal.ITIMER_REAL, 0)
        spec["probes"] = []  # no value for any probe: every test fails
    for index, (probe, builtin) in enumerate(spec["probes"]):
        if builtin is not None and builtin not in namespace:
            os.write(out, f"{index}\t[\"absent\"]\n".encode())
            continue
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

INPUTS_HARNESS = r'''
import json, os, sys
sys.path.insert(0, os.getcwd())  # -I leaves the script's folder off the path
from _code_values import encode

with open("inputs.json") as f:
    spec = json.load(f)
namespace = {"__name__": "tests"}
exec(compile(spec["setup"], "tests_setup.py", "exec"), namespace)
results = []
for source in spec["inputs"]:
    try:
        value = eval(compile(source, "input.py", "eval"), namespace)
    except Exception as exc:
        results.append(["error", f"{type(exc).__name__}: {exc}"[:200]])
        continue
    try:
        results.append(["ok", encode(value)])
    except (TypeError, ValueError) as exc:
        results.append(["unplain", str(exc)[:200]])
print(json.dumps(results))
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
        scope = dict(namespace, **{name: decode(raw) for name, raw in values.items()})
        results.append(bool(eval(compile(source, "verdict.py", "eval"), scope)))
    except BaseException:
        results.append(False)
print(json.dumps(results + [False] * (len(spec["verdicts"]) - len(results))))
'''


def score_asserts(program: str, setup: str, tests: tuple[str, ...], limits: SandboxLimits, per_test_s: float,
                  require_isolation: bool) -> float:
    """Number of the asserts that pass, judged outside the program's reach."""
    suite = split_suite(setup, tests)
    inputs = evaluate_inputs(suite, limits, require_isolation)
    if inputs is None:  # the tests' own setup failed: nothing can pass
        return 0.0
    claims = run_probes(program, suite, limits, per_test_s, require_isolation, inputs)
    return float(sum(judge(suite, claims, limits, require_isolation)))


def evaluate_inputs(suite: SplitSuite, limits: SandboxLimits, require_isolation: bool) -> list | None:
    """The encoded inputs (None for one whose expression raised), or None when the setup
    failed; UnsplittableTest names a test whose argument is not plain data."""
    if not suite.inputs:
        return []
    try:
        results = _inputs_of(suite.trusted_setup, suite.inputs, limits, require_isolation)
    except ValueError:
        return None
    encoded = []
    for (status, detail), source, owner in zip(results, suite.inputs, suite.input_owners):
        if status == "unplain":
            raise UnsplittableTest(f"{owner}: its argument {source!r:.80} is not plain data ({detail}); "
                                   "the program's process gets only plain values from the tests")
        encoded.append(detail if status == "ok" else None)
    return encoded


@functools.lru_cache(maxsize=256)
def _inputs_of(setup: str, inputs: tuple[str, ...], limits: SandboxLimits, require_isolation: bool) -> tuple:
    """One sandbox run per suite (the group's completions share it); ValueError, not cached,
    when the run gave no well-formed answer."""
    files = {"harness.py": INPUTS_HARNESS, "inputs.json": json.dumps({"setup": setup, "inputs": list(inputs)}),
             "_code_values.py": CODEC_SOURCE}
    result = run(["harness.py"], limits=limits, files=files, require_isolation=require_isolation)
    results = json.loads(result.stdout)  # ValueError when the setup raised or the run was killed
    if len(results) != len(inputs):
        raise ValueError("inputs harness answered the wrong number of values")
    for status, detail in results:
        if status == "ok":
            _code_values.decode(detail)  # bounded like any value that crosses
    return tuple((status, detail) for status, detail in results)


def run_probes(program: str, suite: SplitSuite, limits: SandboxLimits, per_test_s: float,
               require_isolation: bool, inputs: list | None = None) -> list[object]:
    """The program's claimed value of every probe: ``(raw, value)``, or ``RAISED``/``ABSENT``."""
    probes = [[probe.source, probe.builtin] for test in suite.tests for probe in test.probes]
    spec = {"setup": suite.program_setup, "probes": probes, "per_test_s": per_test_s, "inputs": inputs or []}
    files = {"main.py": program, "harness.py": PROBE_HARNESS, "probes.json": json.dumps(spec),
             "_code_values.py": CODEC_SOURCE}
    result = run(["harness.py"], limits=limits, files=files, require_isolation=require_isolation)
    return read_claims(result.stdout, len(probes))


def read_claims(text: str, count: int) -> list[object]:
    """Decode ``index<TAB>value`` lines: the first valid line of each index 0..count-1 wins;
    anything else (other indices, non-ASCII digits, junk, malformed or too costly values) is
    ignored."""
    claims: list[object] = [_code_values.RAISED] * count
    seen: set[int] = set()
    for line in text.splitlines():
        index, _, encoded = line.partition("\t")
        if not INDEX.fullmatch(index) or int(index) >= count or int(index) in seen:
            continue
        try:
            raw = json.loads(encoded)
        except (ValueError, RecursionError):
            continue
        if raw == [ABSENT]:
            claims[int(index)] = ABSENT
        elif isinstance(raw, list) and raw[:1] == [_code_values.RAISED]:
            continue
        else:
            try:
                claims[int(index)] = (raw, _code_values.decode(raw))
            except ValueError:
                continue
        seen.add(int(index))
    return claims


def judge(suite: SplitSuite, claims: list[object], limits: SandboxLimits, require_isolation: bool) -> list[bool]:
    """One verdict per test, computed where the program cannot reach."""
    verdicts: list[bool | None] = []
    sandboxed: list[tuple[int, str, dict]] = []
    start = 0
    for test in suite.tests:
        mine, start = claims[start:start + len(test.probes)], start + len(test.probes)
        resolved = _resolve(test, mine)
        if resolved is None:
            verdicts.append(False)
        elif _is_safe(resolved[0], suite.math_is_module):
            verdicts.append(_evaluate_here(resolved[0], {name: value for name, (_, value) in resolved[1].items()}))
        else:
            verdicts.append(None)
            sandboxed.append((len(verdicts) - 1, ast.unparse(resolved[0]),
                              {name: raw for name, (raw, _) in resolved[1].items()}))
    if sandboxed:
        for (index, _, _), verdict in zip(sandboxed, _evaluate_sandboxed(suite, sandboxed, limits, require_isolation)):
            verdicts[index] = verdict
    return [v is True for v in verdicts]


def _resolve(test: SplitTest, claims: list[object]) -> tuple[ast.Expression, dict] | None:
    """The verdict with absent builtins' calls put back, and the program's values by name; None
    when a probe has no value or no value came from the program at all."""
    values, fallbacks = {}, {}
    for k, (probe, claim) in enumerate(zip(test.probes, claims)):
        if isinstance(claim, tuple):
            values[f"_v{k}"] = claim
        elif claim == ABSENT and probe.builtin is not None:
            fallbacks[f"_v{k}"] = ast.parse(probe.fallback, mode="eval").body
        else:
            return None
    if not values:
        return None

    class PutBack(ast.NodeTransformer):
        def visit_Name(self, node):
            return fallbacks.get(node.id, node)

    return ast.fix_missing_locations(PutBack().visit(ast.parse(test.verdict, mode="eval"))), values


def _is_safe(verdict: ast.Expression, math_is_module: bool) -> bool:
    """Whether the verdict can be evaluated in this process: plain data, pure built-ins, a few
    methods of plain values and of ``math`` (when the tests' ``math`` is the module) only."""
    nodes = list(ast.walk(verdict))
    attributes = [n for n in nodes if isinstance(n, ast.Attribute)]
    library = {id(n.value) for n in attributes if isinstance(n.value, ast.Name) and n.value.id == "math"}
    return (all(isinstance(n, SAFE_NODES) for n in nodes)
            and all(n.id in SAFE_FUNCTIONS or re.fullmatch(r"_v[0-9]+", n.id) or (id(n) in library and math_is_module)
                    for n in nodes if isinstance(n, ast.Name))
            and all(hasattr(SAFE_MATH, n.attr) if id(n.value) in library else n.attr in SAFE_METHODS
                    for n in attributes)
            and not any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "sum"
                        and (len(n.args) > 1 or n.keywords) for n in nodes))  # sum(lists, []) is quadratic


def _evaluate_here(verdict: ast.Expression, values: dict) -> bool:
    scope = {**SAFE_FUNCTIONS, "math": SAFE_MATH, **values}
    try:
        return bool(eval(compile(verdict, "verdict.py", "eval"), {"__builtins__": {}}, scope))
    except Exception:  # noqa: BLE001 - a verdict that raises is a failed test
        return False


def _evaluate_sandboxed(suite: SplitSuite, verdicts: list[tuple[int, str, dict]], limits: SandboxLimits,
                        require_isolation: bool) -> list[bool]:
    spec = {"setup": suite.trusted_setup, "verdicts": [[source, raw] for _, source, raw in verdicts]}
    files = {"harness.py": VERDICT_HARNESS, "verdicts.json": json.dumps(spec), "_code_values.py": CODEC_SOURCE}
    result = run(["harness.py"], limits=limits, files=files, require_isolation=require_isolation)
    try:
        decided = json.loads(result.stdout)
    except ValueError:
        return [False] * len(verdicts)
    if not isinstance(decided, list):
        return [False] * len(verdicts)
    return [v is True for v in decided][:len(verdicts)] + [False] * max(0, len(verdicts) - len(decided))

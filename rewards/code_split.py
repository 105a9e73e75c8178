"""Split assert-style tests into what the program computes and what only the trusted side sees.

One assert such as ``assert math.isclose(half(K), 0.5)`` (setup ``K = 1``) becomes

- *probes*: the smallest expressions that need the program, in the form its process evaluates
  (``half(_a0)``): a call of one of its names, a method or attribute of one of its objects, an
  item of one of its objects, a bare name of its;
- *inputs*: the test-side values a probe passes to the program (``_a0`` is ``K``), computed
  without the program and sent to it as plain data: arguments are all the program ever sees of
  the tests;
- a *verdict*: the rest of the assert with each probe replaced by ``_v0``, ``_v1``...
  (``math.isclose(_v0, 0.5)``), evaluated outside the program's process.

Names resolve as Python would resolve them in ``program + setup + assert``: a name the setup
binds is the tests' (it never reaches the program), a builtin's name is the program's only if
the program defines it (a *conditional* probe: the verdict computes the builtin when it does
not), any other name is the program's, except a standard-library module used as ``module.attr``
that the setup does not bind: the verdict imports it (a program cannot patch it). Method calls
and attributes on a value a function returned (``greet(x).startswith('He')``, ``f(x)[0]``) run in
the verdict, on the decoded value; only a method or attribute of one of the program's objects
(``Solution().two_sum(...)``, ``obj.get(1)``, ``Box(3).double().value``) runs in the program.
Which is which follows Python's naming convention: ``Name(...)`` with a capitalised name makes
an object of the program's; a lowercase one returns a value, whose plain-type methods
(``str.startswith``, ``list.count``, ...) the verdict applies.

A builtin-named call is a conditional probe only in an assert with no other program call and
with no setup name in its arguments (``assert pow(2, 3) == 8``); elsewhere (``len(f(x))``,
``max(E0)``) it is part of the verdict. Setup statements that need the program run in its
process only as ``name = <probe>`` or ``<probe>`` (``s = Solution()``, ``obj.put(1, 1)``), plus
the setup's imports; any other (a helper that calls the program, a lambda) is refused with
:class:`UnsplittableTest` naming it, and so is a program call inside a comprehension or lambda.
"""

from __future__ import annotations

import ast
import builtins
import sys
from dataclasses import dataclass

BUILTIN_NAMES = frozenset(dir(builtins))
PLAIN_TYPES = (str, bytes, int, float, complex, bool, list, tuple, dict, set, frozenset, range, type(None))
PLAIN_ATTRS = frozenset(name for kind in PLAIN_TYPES for name in dir(kind))
OBJECT, VALUE = "object", "value"  # what a program expression yields: one of its objects, or a value


class UnsplittableTest(ValueError):
    """An assert or setup statement whose program calls cannot be separated from the tests."""


@dataclass(frozen=True)
class Probe:
    """An expression the program's process evaluates (``_a<k>`` are inputs). A conditional
    probe (``builtin`` set) runs only if the program defines that name; otherwise the verdict
    evaluates ``fallback``, the builtin call, itself."""

    source: str
    builtin: str | None = None
    fallback: str | None = None


@dataclass(frozen=True)
class SplitTest:
    source: str
    probes: tuple[Probe, ...]
    verdict: str  # placeholders _v0, _v1... for the probes' values


@dataclass(frozen=True)
class SplitSuite:
    trusted_setup: str  # setup statements that need nothing of the program, plus library imports
    program_setup: str  # the setup's imports and its program statements, run after the program
    inputs: tuple[str, ...]  # expressions over the trusted setup: the values _a0, _a1...
    input_owners: tuple[str, ...]  # the test or statement each input belongs to, for errors
    tests: tuple[SplitTest, ...]
    math_is_module: bool = False  # the tests' `math` is the standard module (a local verdict may use it)


def split_suite(setup: str, tests: tuple[str, ...]) -> SplitSuite:
    """Split every assert of a suite; UnsplittableTest names what cannot be split."""
    scope = _Scope()
    statements = ast.parse(setup).body if setup.strip() else []
    needs_program = set(range(len(statements)))
    changed = True
    while changed:  # a statement is the tests' if it needs only builtins and the tests' names
        changed = False  # (to a fixed point: helpers may call helpers defined below them)
        for i in sorted(needs_program):
            if _free_names(statements[i]) - _bound_names(statements[i]) <= BUILTIN_NAMES | scope.trusted:
                needs_program.discard(i)
                scope.trusted |= _bound_names(statements[i])
                changed = True
    trusted, program = [], []
    for i, statement in enumerate(statements):
        if isinstance(statement, (ast.Import, ast.ImportFrom)):
            program.append(statement)  # a module is no secret; programs may rely on the tests' imports
        if i in needs_program:
            program.append(scope.program_statement(statement))
        else:
            trusted.append(statement)
    split = tuple(scope.split_test(source) for source in tests)
    libraries = [ast.Import([ast.alias(name)]) for name in sorted(scope.libraries)]
    return SplitSuite(
        trusted_setup="\n".join(ast.unparse(s) for s in libraries + trusted),
        program_setup="\n".join(ast.unparse(s) for s in program),
        inputs=tuple(source for source, _ in scope.inputs), input_owners=tuple(o for _, o in scope.inputs),
        tests=split, math_is_module=_is_module(trusted, scope, "math"))


class _Scope:
    """Name resolution for one suite, and the inputs collected while splitting it."""

    def __init__(self):
        self.trusted: set[str] = set()
        self.program_bound: dict[str, ast.expr] = {}
        self.libraries: set[str] = set()
        self.inputs: list[tuple[str, str]] = []  # (expression, owner)
        self.local: set[str] = set()
        self.owner = ""

    def program_name(self, name: str) -> bool:
        if name in self.local or name in self.trusted:
            return False
        return name in self.program_bound or name not in BUILTIN_NAMES

    def program_statement(self, statement: ast.stmt) -> ast.stmt:
        """A setup statement that needs the program: ``name = <probe>`` or ``<probe>``."""
        self.owner, self.local = f"setup statement {ast.unparse(statement)!r:.120}", set()
        value = getattr(statement, "value", None)
        simple = isinstance(statement, ast.Expr) or (
            isinstance(statement, ast.Assign) and all(isinstance(t, ast.Name) for t in statement.targets))
        if not simple or not self.is_probe(value):
            raise UnsplittableTest(
                f"{self.owner}: it uses the program in a form that cannot run apart from the tests; "
                "the program's process only runs `name = f(...)` or `obj.method(...)` setup statements")
        statement.value = self.program_form(value)
        for target in getattr(statement, "targets", []):
            self.program_bound[target.id] = value
        return statement

    def split_test(self, source: str) -> SplitTest:
        try:
            node = ast.parse(source).body[0]
        except (SyntaxError, IndexError):
            node = None
        if not isinstance(node, ast.Assert):
            return SplitTest(source, (), "False")  # counted, and fails
        self.owner, self.local = f"test {source!r:.120}", _bound_names(node.test)
        for n in ast.walk(node.test):  # module.attr of a module the setup does not bind: a library
            if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in sys.stdlib_module_names
                    and not self.program_name_in_setup(n.value.id)):
                self.trusted.add(n.value.id)
                self.libraries.add(n.value.id)
        probes: list[Probe] = []
        direct = any(self.is_probe(n) for n in ast.walk(node.test) if isinstance(n, ast.expr))
        verdict = _Cut(self, probes, conditional=not direct).visit(node.test)
        return SplitTest(source, tuple(probes), ast.unparse(verdict))

    def program_name_in_setup(self, name: str) -> bool:
        return name in self.program_bound or name in self.trusted

    def is_probe(self, node: ast.AST | None) -> bool:
        """Whether ``node`` is evaluated in the program's process (see the module docstring)."""
        if isinstance(node, ast.Name):
            return self.program_name(node.id)
        if isinstance(node, ast.Call):
            return self.is_probe(node.func)
        if isinstance(node, ast.Attribute):
            return self.is_probe(node.value) and not (self.kind(node.value) == VALUE and node.attr in PLAIN_ATTRS)
        if isinstance(node, ast.Subscript):
            return self.is_probe(node.value) and self.kind(node.value) == OBJECT
        return False

    def kind(self, node: ast.expr, depth: int = 0) -> str:
        if isinstance(node, ast.Name):
            bound = self.program_bound.get(node.id)
            return OBJECT if bound is None or depth > 8 else self.kind(bound, depth + 1)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return OBJECT if node.func.id[:1].isupper() else VALUE
        return VALUE

    def conditional(self, node: ast.expr) -> str | None:
        """The builtin's name if ``node`` calls a builtin-named function with only literal arguments."""
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            return None
        name = node.func.id
        if name not in BUILTIN_NAMES or name in self.trusted or name in self.local or name in self.program_bound:
            return None
        arguments = _free_names(ast.Tuple([*node.args, *[k.value for k in node.keywords]], ast.Load()))
        return name if not arguments & (self.trusted | self.local | set(self.program_bound)) and not any(
            self.program_name(n) for n in arguments) else None

    def program_form(self, node: ast.expr) -> ast.expr:
        """``node`` with each test-side value it passes to the program replaced by an input."""
        free = _free_names(node) - _bound_names(node)
        if free & self.local:
            raise UnsplittableTest(f"{self.owner}: it calls the program inside a comprehension or lambda; "
                                   "write one assert per case")
        whole = not isinstance(node, (ast.Starred, ast.Slice))  # `*args`, `a:b` are not values
        if whole and not any(self.program_name(n) for n in free) and free & self.trusted:
            self.inputs.append((ast.unparse(node), self.owner))
            return ast.Name(f"_a{len(self.inputs) - 1}", ast.Load())
        for field, value in ast.iter_fields(node):
            if isinstance(value, ast.expr):
                setattr(node, field, self.program_form(value))
            elif isinstance(value, list):
                setattr(node, field, [self.program_form(v) if isinstance(v, ast.expr) else self._keyword(v)
                                      for v in value])
        return node

    def _keyword(self, item):
        if isinstance(item, ast.keyword):
            item.value = self.program_form(item.value)
        elif isinstance(item, ast.comprehension):
            item.iter, item.ifs = self.program_form(item.iter), [self.program_form(i) for i in item.ifs]
        return item


class _Cut(ast.NodeTransformer):
    """Replace each probe of an assert's expression by its placeholder, top-down."""

    def __init__(self, scope: _Scope, probes: list[Probe], conditional: bool):
        self.scope, self.probes, self.allow_conditional = scope, probes, conditional

    def visit(self, node):
        if isinstance(node, ast.expr):
            if self.scope.is_probe(node):
                return self._placeholder(Probe(ast.unparse(self.scope.program_form(node))))
            name = self.allow_conditional and self.scope.conditional(node)
            if name:
                source = ast.unparse(node)
                return self._placeholder(Probe(source, builtin=name, fallback=source))
        return super().visit(node)

    def _placeholder(self, probe: Probe) -> ast.Name:
        self.probes.append(probe)
        return ast.Name(f"_v{len(self.probes) - 1}", ast.Load())


def _is_module(trusted: list[ast.stmt], scope: _Scope, name: str) -> bool:
    """Whether ``name`` is the standard module of that name on the tests' side."""
    plain_import = lambda s: isinstance(s, ast.Import) and [(a.name, a.asname) for a in s.names] == [(name, None)]  # noqa: E731
    rebinds = any(name in _bound_names(s) and not plain_import(s) for s in trusted)
    return not rebinds and (name in scope.libraries or any(plain_import(s) for s in trusted))


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

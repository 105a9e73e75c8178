"""The packages depend one way: no import cycle among the modules of rl_pipeline/ and rewards/,
and every import between rooms (a top-level module or package) points down the floors below.

The graph is read from the source (the AST), not by importing, so it sees every import
statement wherever it stands. Imports inside functions count: a lazy import breaks a cycle at
import time but not in the design (the two modules still need each other to be understood,
tested or moved), so a cycle through one fails here too. Imports by string
(``importlib.import_module(name)``) are plugin loading, not a dependency, and are not seen.

An import of ``a.b.c`` is an edge to the module ``a.b.c``; ``from a.b import c`` is an edge to
``a.b.c`` when that is a module and to ``a.b`` (its ``__init__``) otherwise. Importing a module
runs its parents' ``__init__`` too, but a package that re-exports from its children is the
usual pattern, not a cycle of design, so those implicit edges are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("rl_pipeline", "rewards")


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file under the packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of a dotted name that is one of our modules (None: a third-party name)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ours that `module` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                targets.add(_resolve(alias.name, modules))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package that holds this module
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in modules else _resolve(base, modules))
    targets.discard(None)
    targets.discard(module)
    return targets


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = module_files(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a closed path a -> ... -> a) per strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm; the graph is small, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_closed_path(sorted(component), graph) for component in components]


def _closed_path(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start, members = component[0], set(component)
    previous = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & members):
                if target == start:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return path[::-1] + [start]
                if target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {component}")


def test_the_finder_sees_a_cycle_through_a_function_level_import(tmp_path):
    # a -> b at module level, b -> a inside a function: a cycle of design.
    (tmp_path / "rl_pipeline").mkdir()
    (tmp_path / "rewards").mkdir()
    (tmp_path / "rl_pipeline" / "__init__.py").write_text("")
    (tmp_path / "rewards" / "__init__.py").write_text("from rl_pipeline import a\n")
    (tmp_path / "rl_pipeline" / "a.py").write_text("from rl_pipeline.b import f\n")
    (tmp_path / "rl_pipeline" / "b.py").write_text("def f():\n    from . import a\n")
    cycles = find_cycles(import_graph(tmp_path))
    assert cycles == [["rl_pipeline.a", "rl_pipeline.b", "rl_pipeline.a"]]


def test_no_import_cycles():
    graph = import_graph()
    assert "rl_pipeline.pipelines.grpo" in graph and "rewards" in graph  # it read the real tree
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (function-level imports count):\n" + "\n".join(
        " -> ".join(cycle) for cycle in cycles)


# The floors, top-down, written once: a module imports its own room and the rooms of lower floors
# only. A room (a sub-package or top-level module of rl_pipeline, or the rewards package) that is
# not listed fails the test until it is given a floor.
FLOORS: list[set[str]] = [
    {"cli"},                                   # rlp
    {"pipelines"},                             # the drivers: one loop each
    {"policy"},                                # trainer ranks + engines in step: versions, pushes, hand-overs
    {"cluster", "memory_plan"},                # where roles run and whether they fit
    {"workers"},                               # Ray actors
    {"weight_sync"},                           # trainer -> engines transports
    {"models"},                                # load/save, logprobs, LoRA, tiny models
    {"batch"},                                 # the GRPO batch
    {"data"},                                  # datasets, tokenisation, micro-batches, synthetic tasks
    {"tools"},                                 # the tool plug-in API
    {"tracking", "timeline", "checkpoint", "progress", "console", "ray_reaper", "view"},  # a run's services
    {"config"},                                # the recipe schema
    {"algorithms"},                            # pure math and the algorithm registry
    {"rewards"},                               # the reward plug-in API (no Ray)
    {"plugins", "atomic", "interrupt", "remote"},  # the ground: plug-ins, atomic writes, Ctrl-C, typed remote calls
]


def room_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "rewards":
        return "rewards"
    return parts[1] if len(parts) > 1 else "rl_pipeline"


def upward_imports(graph: dict[str, set[str]], floors: list[set[str]]) -> list[str]:
    """Every import from a room to a room on a higher floor, and every room without a floor."""
    floor_of = {room: level for level, rooms in enumerate(floors) for room in rooms}
    problems = sorted({f"{room_of(m)} has no floor (add it to FLOORS)" for m in graph
                       if room_of(m) not in floor_of and room_of(m) != "rl_pipeline"})
    for module, targets in sorted(graph.items()):
        source = room_of(module)
        for target in sorted(targets):
            if source in floor_of and room_of(target) in floor_of and floor_of[room_of(target)] < floor_of[source]:
                problems.append(f"{module} -> {target}: {source} imports {room_of(target)}, a higher floor")
    return problems


def test_the_rule_sees_an_arrow_pointing_up():
    graph = {"rl_pipeline.models.a": {"rl_pipeline.workers.b"}, "rl_pipeline.workers.b": {"rl_pipeline.models.a"}}
    assert upward_imports(graph, FLOORS) == [
        "rl_pipeline.models.a -> rl_pipeline.workers.b: models imports workers, a higher floor"]


def test_every_import_points_down_the_floors():
    problems = upward_imports(import_graph(), FLOORS)
    assert not problems, "imports against the floors (tests/unit/test_import_cycles.py FLOORS):\n" + "\n".join(problems)

"""Typed remote calls (rl_pipeline/remote.py): the driver names methods, never strings.

A real Ray actor (the session's local instance) answers `call`; the composed TrainerWorker exposes
every part's method under the part method's own name, and the protocols the transports call
through (`EngineWeights`, `TrainerRank`) match the actor classes that implement them.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import ray

from rl_pipeline.remote import call, expose, method_name, worker_rpc
from rl_pipeline.weight_sync.engine_side import EngineWeights, RolloutWorkerExtension
from rl_pipeline.weight_sync.tensors import TrainerRank
from rl_pipeline.workers.rollout import RolloutEngine
from rl_pipeline.workers.trainer import TrainerWorker
from rl_pipeline.workers.trainer.engine import TrainerEngine

PACKAGE = Path(__file__).resolve().parents[2] / "rl_pipeline"


class Part:
    def __init__(self) -> None:
        self.calls = 0

    def add(self, a: int, b: int = 1) -> int:
        """Adds and counts."""
        self.calls += 1
        return a + b + self.calls


class Composed:
    def __init__(self) -> None:
        self.part = Part()

    add = expose(Part.add, "part")


class Part2(Part):  # ray.remote rewrites the methods of what it is given: these two stay plain
    def add(self, a: int, b: int = 1) -> int:
        """Adds and counts."""
        return super().add(a, b)


class Composed2:
    def __init__(self) -> None:
        self.part = Part2()

    add = expose(Part2.add, "part")


def test_call_runs_the_named_method_and_a_missing_one_fails_naming_it(ray_local):
    actor = ray.remote(num_cpus=0)(Composed).remote()
    try:
        assert ray.get(call(actor, Composed.add, 2, b=3)) == 6
        assert ray.get(call(actor, Part.add, 2)) == 5, "the part's method reaches the exposed one"

        def missing(self):
            pass

        with pytest.raises(AttributeError, match=r"Composed has no remote method 'missing'"):
            call(actor, missing)
    finally:
        ray.kill(actor)


def test_expose_keeps_the_part_methods_name_signature_and_doc():
    assert Composed2.add.__name__ == "add" and Composed2.add.__doc__ == "Adds and counts."
    assert list(inspect.signature(Composed2.add).parameters) == ["self", "a", "b"]
    assert Composed2().add(1) == 3
    with pytest.raises(TypeError, match="defined with def"):
        method_name(lambda self: None)


def test_worker_rpc_sends_the_methods_name():
    class LLM:
        def collective_rpc(self, method, args=()):
            return [(method, args)]

    assert worker_rpc(LLM(), RolloutWorkerExtension.rlp_load_weights, b"x") == [("rlp_load_weights", (b"x",))]


def test_every_trainer_worker_method_runs_a_part_method_of_its_own_name():
    exposed = {n: f for n, f in vars(TrainerWorker).items() if inspect.isfunction(f) and n != "__init__"}
    assert len(exposed) > 20
    for name, forward in exposed.items():
        assert forward.__wrapped__.__name__ == name, f"TrainerWorker.{name} runs {forward.__wrapped__.__qualname__}"


@pytest.mark.parametrize("protocol, actor_cls", [(EngineWeights, RolloutEngine), (TrainerRank, TrainerEngine)])
def test_protocols_the_transports_call_through_match_their_actor_classes(protocol, actor_cls):
    for name, method in vars(protocol).items():
        if inspect.isfunction(method) and not name.startswith("_"):
            assert name in vars(actor_cls), f"{actor_cls.__name__} lacks {protocol.__name__}.{name}"
            # ray.remote adds `_ray_trace_ctx` to the methods of a class it has made an actor of
            implemented = [p for p in inspect.signature(getattr(actor_cls, name)).parameters if p != "_ray_trace_ctx"]
            assert list(inspect.signature(method).parameters) == implemented, name


def test_no_remote_method_is_named_by_a_string():
    """`getattr(actor, "x").remote`, `.call_all("x")` and `collective_rpc("x")` are gone for good."""
    pattern = re.compile(r"""(call_all|call_each|collective_rpc|worker_rpc|_rank0_ref)\(\s*["']|getattr\([^)]*\)\.remote""")
    files = [p for folder in (PACKAGE, PACKAGE.parent / "tests") for p in folder.rglob("*.py")
             if p != Path(__file__).resolve()]
    hits = [f"{path.relative_to(PACKAGE.parent)}:{i}: {line.strip()}"
            for path in files for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, "\n".join(hits)

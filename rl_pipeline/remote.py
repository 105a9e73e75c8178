"""Typed remote calls: the driver names the worker's method itself, never a string.

Ray reaches an actor's methods as attributes of its handle (`actor.sleep.remote(level)`), which an
editor cannot follow, and vLLM's `collective_rpc` takes a method name. Here the caller passes the
method object instead:

    call(engine, RolloutEngine.sleep, level)            # an ObjectRef, as actor.sleep.remote(level)
    group.call_all(TrainerWorker.save_state, path)      # workers/group.ActorGroup, every actor
    worker_rpc(llm, RolloutWorkerExtension.rlp_load_weights, blob)   # vLLM's workers

Go-to-definition leads from the driver to the code that runs, a rename renames both sides, and a
method the actor does not have fails on the driver with the actor class and the method named.

`expose(Part.method, "part")` builds the one-line methods of an actor composed of parts
(`workers/trainer/worker.TrainerWorker`): the actor method carries the part method's name, so a
caller may name either one.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Callable


def method_name(method: Callable) -> str:
    """The name a method is reached by on an actor handle or through collective_rpc."""
    name = getattr(method, "__name__", None)
    if not isinstance(name, str) or name == "<lambda>":
        raise TypeError(f"a remote call names a method defined with def, not {method!r}")
    return name


def call(actor, method: Callable, *args, **kwargs):
    """`actor.<method>.remote(*args, **kwargs)`: the ObjectRef of `method` run on `actor`."""
    name = method_name(method)
    try:
        bound = getattr(actor, name)
    except AttributeError:
        owner = getattr(getattr(actor, "_ray_actor_creation_function_descriptor", None), "class_name", "the actor")
        raise AttributeError(f"{owner} has no remote method {name!r} "
                             f"(named as {getattr(method, '__qualname__', name)})") from None
    return bound.remote(*args, **kwargs)


def worker_rpc(llm, method: Callable, *args) -> list[Any]:
    """Run a vLLM worker-extension method on every worker of `llm` (results in rank order).

    vLLM takes a callable only with VLLM_ALLOW_INSECURE_SERIALIZATION (it would pickle code to
    its engine process), so the name travels, taken from the method itself."""
    return llm.collective_rpc(method_name(method), args=args)


def expose(method: Callable, part: str) -> Callable:
    """An actor method that runs `method` on the actor's part `self.<part>` (a dotted path for a
    part of a part), under the same name.

    An actor composed of parts keeps its remote surface in its class body, one line per method,
    each naming the code that runs (Ray calls only the actor's own methods)."""
    get_part = operator.attrgetter(part)

    @functools.wraps(method)
    def forward(self, *args, **kwargs):
        return method(get_part(self), *args, **kwargs)

    return forward

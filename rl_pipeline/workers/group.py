"""A group of identical Ray actors on one placement group, with "run on all" and "shard" calls.

The driver talks to a role (trainer ranks, rollout engines, ...) through an ActorGroup, never
to single actors. Before reserving anything the group checks the cluster has the resources,
and a placement group that cannot be placed fails with what is missing instead of hanging.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

log = logging.getLogger(__name__)


class PlacementError(RuntimeError):
    """The cluster cannot host a role; the message says which resource is short."""


@dataclass
class Resources:
    """What one actor of a role needs; `custom` pins a role to nodes holding that resource."""

    cpus: float = 0.5
    gpus: float = 0.0
    custom: dict[str, float] | None = None

    def bundle(self) -> dict[str, float]:
        bundle = {"CPU": self.cpus}
        if self.gpus:
            bundle["GPU"] = self.gpus
        bundle.update(self.custom or {})
        # Ray rejects empty bundles; a tiny CPU share keeps zero-CPU roles placeable.
        return {k: v for k, v in bundle.items() if v > 0} or {"CPU": 0.01}


def check_cluster_has(role: str, count: int, resources: Resources) -> None:
    """Fail before reserving anything when the whole cluster lacks what `count` actors need."""
    total = ray.cluster_resources()
    for name, per_actor in resources.bundle().items():
        need = per_actor * count
        have = total.get(name, 0.0)
        if need > have + 1e-9:
            raise PlacementError(
                f"{role}: needs {need:g} {name} ({count} x {per_actor:g}) but the Ray cluster has {have:g}; "
                f"lower the {role} count or its resources in the recipe, or add nodes with {name}"
            )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def node_address() -> tuple[str, int]:
    """(ip, free port) of the node this code runs on; rank 0 hosts the process-group rendezvous."""
    return ray.util.get_node_ip_address(), free_port()


class ActorGroup:
    """N actors of one class, one per placement-group bundle, addressed together."""

    def __init__(self, role: str, actors: list, pg, spawn: dict[str, Any] | None = None) -> None:
        self.role = role
        self.actors = actors
        self.placement_group = pg
        # How start() created the actors (class, resources, options), so restart() can repeat it.
        self._spawn = spawn

    @classmethod
    def start(
        cls,
        role: str,
        actor_cls,
        count: int,
        resources: Resources,
        strategy: str = "PACK",
        ready_timeout_s: float = 60.0,
        init_args: list[tuple] | None = None,
        **actor_options: Any,
    ) -> "ActorGroup":
        """Reserve `count` bundles, then create one actor per bundle (actor i gets init_args[i])."""
        check_cluster_has(role, count, resources)
        pg = placement_group([resources.bundle() for _ in range(count)], strategy=strategy)
        try:
            ray.get(pg.ready(), timeout=ready_timeout_s)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(pg)
            raise PlacementError(
                f"{role}: {count} bundles of {resources.bundle()} with strategy {strategy} could not be "
                f"placed within {ready_timeout_s:.0f}s; free resources: {ray.available_resources()}"
            ) from None
        remote_cls = ray.remote(actor_cls) if not hasattr(actor_cls, "remote") else actor_cls
        spawn = {"remote_cls": remote_cls, "resources": resources, "options": actor_options}
        actors = [_create_actor(spawn, pg, i, init_args[i] if init_args else ()) for i in range(count)]
        return cls(role, actors, pg, spawn)

    def restart(self, index: int, init_args: tuple = ()):
        """Replace actor `index` (dead or alive) by a new one in the same placement-group bundle.

        Returns the new actor handle; the caller re-initialises its state (weights, ...).
        """
        if self._spawn is None:
            raise RuntimeError(f"{self.role}: this group was not created by ActorGroup.start; cannot restart")
        try:
            ray.kill(self.actors[index], no_restart=True)
        except Exception:  # already dead: nothing to kill
            pass
        self.actors[index] = _create_actor(self._spawn, self.placement_group, index, init_args)
        return self.actors[index]

    def __len__(self) -> int:
        return len(self.actors)

    def call_all(self, method: str, *args, **kwargs) -> list:
        """Call `method` with the same arguments on every actor; results in actor order."""
        return ray.get([getattr(a, method).remote(*args, **kwargs) for a in self.actors])

    def call_each(self, method: str, per_actor_args: list[tuple], **kwargs) -> list:
        """Call `method` on actor i with per_actor_args[i] (a shard of the work)."""
        if len(per_actor_args) != len(self.actors):
            raise ValueError(f"{self.role}: {len(per_actor_args)} shards for {len(self.actors)} actors")
        refs = [getattr(a, method).remote(*args, **kwargs) for a, args in zip(self.actors, per_actor_args)]
        return ray.get(refs)

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        remove_placement_group(self.placement_group)
        self.actors = []


def _create_actor(spawn: dict[str, Any], pg, index: int, init_args: tuple):
    """One actor of the group, pinned to bundle `index` of the placement group."""
    resources: Resources = spawn["resources"]
    return spawn["remote_cls"].options(
        num_cpus=resources.cpus,
        num_gpus=resources.gpus,
        resources=resources.custom or None,
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=index),
        **spawn["options"],
    ).remote(*init_args)

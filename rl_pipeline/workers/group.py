"""A group of identical Ray actors on one placement group, with "run on all" and "shard" calls.

The driver talks to a role (trainer ranks, rollout engines, ...) through an ActorGroup, never
to single actors. Before reserving anything the group checks the cluster's nodes can host it
(`check_cluster_fits`: resources that exist nowhere, totals, node labels, one-node strategies),
and a placement group that still cannot be placed in time fails with what is free instead of
hanging. Colocated roles share one placement group (`SharedBundles`): actor i of each role
lands in bundle i, so on GPUs they share the same device(s).
"""

from __future__ import annotations

import logging
import math
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rl_pipeline.config import InputError
from rl_pipeline.remote import call

log = logging.getLogger(__name__)

_EPS = 1e-6  # Ray accounts resources in 1e-4 units; anything below is rounding


class PlacementError(RuntimeError):
    """The cluster cannot host a role; the message says which resource is short."""


class ClusterShortfall(PlacementError, InputError):
    """Found before any actor starts: the recipe asks for more than the cluster's nodes have.
    An InputError too, so `rlp` reports it as a one-line error like a bad recipe."""


@dataclass
class Resources:
    """What one actor of a role needs; `custom` (custom resources) and `labels` (node labels)
    pin a role to the nodes that have them."""

    cpus: float = 0.5
    gpus: float = 0.0
    custom: dict[str, float] | None = None
    labels: dict[str, str] | None = None

    def bundle(self) -> dict[str, float]:
        bundle = {"CPU": self.cpus}
        if self.gpus:
            bundle["GPU"] = self.gpus
        bundle.update(self.custom or {})
        # Ray rejects empty bundles; a tiny CPU share keeps zero-CPU roles placeable.
        return {k: v for k, v in bundle.items() if v > 0} or {"CPU": 0.01}

    def __add__(self, other: "Resources") -> "Resources":
        """One bundle holding both (colocation); node labels must agree."""
        labels = dict(self.labels or {})
        for key, value in (other.labels or {}).items():
            if labels.setdefault(key, value) != value:
                raise PlacementError(f"colocated roles ask for different values of node label '{key}': "
                                     f"{labels[key]!r} and {value!r}")
        custom = dict(self.custom or {})
        for key, value in (other.custom or {}).items():
            custom[key] = custom.get(key, 0.0) + value
        return Resources(self.cpus + other.cpus, self.gpus + other.gpus, custom or None, labels or None)


@dataclass
class Demand:
    """`count` bundles of `resources` placed with `strategy`: what one role asks of the cluster."""

    role: str
    count: int
    resources: Resources
    strategy: str = "PACK"


@dataclass
class NodeInfo:
    """A live node as placement sees it: total resources and labels."""

    node_id: str
    resources: dict[str, float]
    labels: dict[str, str] = field(default_factory=dict)
    address: str = ""


def cluster_nodes() -> list[NodeInfo]:
    """The live nodes of the connected cluster."""
    return [NodeInfo(n["NodeID"], dict(n.get("Resources") or {}), dict(n.get("Labels") or {}),
                     n.get("NodeManagerAddress", ""))
            for n in ray.nodes() if n.get("Alive")]


def _fmt(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in bundle.items()) + "}"


def _room_for(node: NodeInfo, bundle: dict[str, float]) -> int:
    """How many copies of `bundle` fit on an empty `node`."""
    room = math.inf
    for name, need in bundle.items():
        room = min(room, math.floor(node.resources.get(name, 0.0) / need + _EPS))
    return int(room)


def find_shortfalls(demands: list[Demand], nodes: list[NodeInfo]) -> list[str]:
    """Every reason the nodes cannot host the demands, each naming the role and the resource.

    Checked: a resource or label no node has; totals over all roles; each role alone against
    its strategy (identical bundles, so the per-node room count is exact). Roles competing for
    the same node are left to the placement-group timeout.
    """
    problems: list[str] = []
    totals: dict[str, float] = {}
    for node in nodes:
        for name, amount in node.resources.items():
            totals[name] = totals.get(name, 0.0) + amount
    known = sorted(k for k in totals if not k.startswith("node:") and k not in {"memory", "object_store_memory"})

    asked: dict[str, list[Demand]] = {}
    for demand in demands:
        for name in demand.resources.bundle():
            asked.setdefault(name, []).append(demand)
    for name, users in asked.items():
        need = sum(d.count * d.resources.bundle()[name] for d in users)
        if need > totals.get(name, 0.0) + _EPS:
            parts = ", ".join(f"{d.role} {d.count} x {d.resources.bundle()[name]:g}" for d in users)
            have = f"the cluster has {totals.get(name, 0.0):g}" if name in totals else "no node has it"
            problems.append(f"needs {need:g} {name} ({parts}) but {have} (cluster resources: {', '.join(known)})")

    for demand in demands:
        bundle = demand.resources.bundle()
        labels = demand.resources.labels or {}
        eligible = [n for n in nodes if all(n.labels.get(k) == v for k, v in labels.items())]
        if not eligible:
            seen = sorted({f"{k}={v}" for n in nodes for k, v in n.labels.items() if not k.startswith("ray.io/")})
            problems.append(f"{demand.role}: no node carries the labels {labels}; node labels in the cluster: "
                            f"{', '.join(seen) or 'none'}")
            continue
        if any(name not in totals for name in bundle):
            continue  # already reported as missing everywhere
        rooms = sorted((_room_for(n, bundle) for n in eligible), reverse=True)
        where = f" on nodes with labels {labels}" if labels else ""
        if demand.strategy == "STRICT_PACK" and rooms[0] < demand.count:
            problems.append(f"{demand.role}: {demand.count} x {_fmt(bundle)} with STRICT_PACK needs one node with "
                            f"room for all {demand.count}; the largest node{where} has room for {rooms[0]}")
        elif demand.strategy == "STRICT_SPREAD" and sum(r > 0 for r in rooms) < demand.count:
            problems.append(f"{demand.role}: {demand.count} x {_fmt(bundle)} with STRICT_SPREAD needs "
                            f"{demand.count} nodes; only {sum(r > 0 for r in rooms)} node(s){where} fit one")
        elif sum(rooms) < demand.count:
            problems.append(f"{demand.role}: {demand.count} x {_fmt(bundle)} do not fit: each must fit on one "
                            f"node and the nodes{where} have room for {sum(rooms)}")
    return problems


def check_cluster_fits(demands: list[Demand], nodes: list[NodeInfo] | None = None) -> None:
    """Fail before reserving anything when the cluster cannot host all `demands`."""
    nodes = cluster_nodes() if nodes is None else nodes
    problems = find_shortfalls(demands, nodes)
    if problems:
        listing = "\n".join(f"  node {n.node_id[:12]} ({n.address}): {_fmt(_visible(n.resources))}" for n in nodes)
        raise ClusterShortfall(
            "the Ray cluster cannot host this job:\n" + "\n".join(f"  - {p}" for p in problems)
            + "\nlower the counts or per-actor resources in the recipe (trainer.*, rollout.*, cluster.placement.*), "
            f"or add nodes that have them. Nodes:\n{listing}"
        )


def _visible(resources: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in resources.items() if not k.startswith("node:") and "memory" not in k}


def check_cluster_has(role: str, count: int, resources: Resources, strategy: str = "PACK") -> None:
    """Fail before reserving anything when the cluster's nodes cannot host `count` actors."""
    check_cluster_fits([Demand(role, count, resources, strategy)])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def merge_switches(results: list[dict]) -> dict:
    """One result for a memory switch (sleep, wake, offload, onload) every actor of a group ran
    together: the first actor's report, the slowest actor's seconds, the earliest start time."""
    return {**results[0], "seconds": max(r["seconds"] for r in results), "at": min(r["at"] for r in results)}


def node_address() -> tuple[str, int]:
    """(ip, free port) of the node this code runs on; rank 0 hosts the process-group rendezvous."""
    return ray.util.get_node_ip_address(), free_port()


def _reserve(role: str, count: int, resources: Resources, strategy: str, ready_timeout_s: float):
    """A ready placement group of `count` bundles, or PlacementError saying what is free."""
    check_cluster_has(role, count, resources, strategy)
    bundle = resources.bundle()
    selector = [dict(resources.labels) for _ in range(count)] if resources.labels else None
    pg = placement_group([dict(bundle) for _ in range(count)], strategy=strategy, bundle_label_selector=selector)
    try:
        ray.get(pg.ready(), timeout=ready_timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise PlacementError(
            f"{role}: {count} bundles of {_fmt(bundle)} with strategy {strategy} could not be placed within "
            f"{ready_timeout_s:.0f}s although the cluster has them in total: other actors or jobs hold them; "
            f"free now: {_fmt(_visible(ray.available_resources()))} (cluster.ready_timeout_s sets the wait)"
        ) from None
    return pg


class SharedBundles:
    """One placement group whose bundle i several roles use together (colocation). Removed when
    the last group using it shuts down."""

    def __init__(self, role: str, count: int, resources: Resources, strategy: str = "PACK",
                 ready_timeout_s: float = 60.0) -> None:
        self.role, self.count, self.resources = role, count, resources
        self.placement_group = _reserve(role, count, resources, strategy, ready_timeout_s)
        self.users = 0

    def acquire(self, role: str, count: int):
        if count > self.count:
            raise PlacementError(f"{role}: {count} actors cannot share the {self.count} bundles of {self.role}")
        self.users += 1
        return self.placement_group

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0:
            remove_placement_group(self.placement_group)


class ActorGroup:
    """N actors of one class, one per placement-group bundle, addressed together."""

    def __init__(self, role: str, actors: list, pg, spawn: dict[str, Any] | None = None,
                 shared: SharedBundles | None = None) -> None:
        self.role = role
        self.actors = actors
        self.placement_group = pg
        # How start() created the actors (class, resources, options), so restart() can repeat it.
        self._spawn = spawn
        self._shared = shared

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
        shared: SharedBundles | None = None,
        **actor_options: Any,
    ) -> "ActorGroup":
        """Reserve `count` bundles (or use bundles 0..count-1 of `shared`), then create one actor per
        bundle (actor i gets init_args[i])."""
        if shared is None:
            pg = _reserve(role, count, resources, strategy, ready_timeout_s)
        else:
            pg = shared.acquire(role, count)
        remote_cls = ray.remote(actor_cls) if not hasattr(actor_cls, "remote") else actor_cls
        spawn = {"remote_cls": remote_cls, "resources": resources, "options": actor_options,
                 "ready_timeout_s": ready_timeout_s}
        actors = [_create_actor(spawn, pg, i, init_args[i] if init_args else ()) for i in range(count)]
        return cls(role, actors, pg, spawn, shared)

    def restart(self, index: int, init_args: tuple = ()):
        """Replace actor `index` (dead or alive) by a new one in the same placement-group bundle.

        Waits until the new actor is up (its __init__ done), at most the group's ready timeout:
        when the bundle's node died and no live node can host the bundle again (a pinned role
        whose only node is gone), this raises PlacementError instead of waiting forever.
        Returns the new actor handle; the caller re-initialises its state (weights, ...).
        """
        if self._spawn is None:
            raise RuntimeError(f"{self.role}: this group was not created by ActorGroup.start; cannot restart")
        try:
            ray.kill(self.actors[index], no_restart=True)
        except Exception:  # already dead: nothing to kill
            pass
        timeout = self._spawn.get("ready_timeout_s", 60.0)
        deadline = time.monotonic() + timeout
        while True:
            actor = _create_actor(self._spawn, self.placement_group, index, init_args)
            ready, _ = ray.wait([actor.__ray_ready__.remote()], timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                ray.kill(actor, no_restart=True)
                break
            try:
                ray.get(ready[0])
            except ray.exceptions.RayActorError as err:
                if err.actor_init_failed:
                    raise  # its __init__ raised: not a placement problem
                # Placed on a node that died before the actor started (Ray had not noticed the
                # death yet): try again while Ray moves the bundle, if some node can take it.
                log.warning("%s: replacement of actor %d lost its node before starting; retrying", self.role, index)
                if time.monotonic() < deadline:
                    time.sleep(1.0)
                    continue
                break
            self.actors[index] = actor
            return actor
        state = ray.util.placement_group_table(self.placement_group).get("state", "unknown")
        why = ("its node died and no live node can host the bundle again" if state == "RESCHEDULING"
               else "the bundle's node is busy or the actor's start-up is slow; raise cluster.ready_timeout_s")
        raise PlacementError(
            f"{self.role}: the replacement of actor {index} did not start within {timeout:.0f}s: {why} "
            f"(bundle {_fmt(self._spawn['resources'].bundle())}, placement group {state}). "
            f"Live nodes: {'; '.join(_fmt(_visible(n.resources)) for n in cluster_nodes())}"
        )

    def __len__(self) -> int:
        return len(self.actors)

    def call_all(self, method: Callable, *args, **kwargs) -> list:
        """Run `method` (the actor class's, e.g. `TrainerWorker.save_state`) with the same
        arguments on every actor; results in actor order."""
        return ray.get(self.submit_all(method, *args, **kwargs))

    def submit_all(self, method: Callable, *args, **kwargs) -> list[ray.ObjectRef]:
        """`call_all` without waiting: one ObjectRef per actor, in actor order."""
        return [call(a, method, *args, **kwargs) for a in self.actors]

    def call_each(self, method: Callable, per_actor_args: list[tuple], **kwargs) -> list:
        """Run `method` on actor i with per_actor_args[i] (a shard of the work)."""
        if len(per_actor_args) != len(self.actors):
            raise ValueError(f"{self.role}: {len(per_actor_args)} shards for {len(self.actors)} actors")
        return ray.get([call(a, method, *args, **kwargs) for a, args in zip(self.actors, per_actor_args)])

    def node_ids(self) -> list[str]:
        """The Ray node id each actor runs on, in actor order."""
        return ray.get([actor_node_id(a) for a in self.actors])

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        if self._shared is not None:
            self._shared.release()
        else:
            remove_placement_group(self.placement_group)
        self.actors = []


def actor_node_id(actor) -> ray.ObjectRef:
    """ObjectRef of the Ray node id `actor` runs on (works for any actor class)."""
    return actor.__ray_call__.remote(lambda _self: ray.get_runtime_context().get_node_id())


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


@dataclass
class Placement:
    """How one role's group is placed: per-actor resources, strategy, optional shared bundles
    (colocation), and how long to wait for resources held by others. Built by
    `rl_pipeline.cluster.plan_grpo` from the recipe; workers' `start` methods accept it."""

    resources: Resources
    strategy: str = "PACK"
    shared: SharedBundles | None = None
    ready_timeout_s: float = 60.0

    def group_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ActorGroup.start."""
        return {"resources": self.resources, "strategy": self.strategy, "shared": self.shared,
                "ready_timeout_s": self.ready_timeout_s}

"""Connect to Ray and place the roles of a job on it.

`connect` joins an existing cluster (recipe `cluster.address`, else RAY_ADDRESS) or starts a
local instance, and shuts down only what this process started (a local instance also when this
process is killed: ray_reaper.py). `plan_grpo` turns the recipe
(role counts, per-actor resources, `cluster.placement` pinning, `cluster.colocate`) into one
`Placement` per role, checking the live cluster can host all of them before any actor starts.
`record_placement` logs where each role landed and writes `placement.json` to the run directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from rl_pipeline import console
from rl_pipeline.atomic import atomic_write_text
from rl_pipeline.config import ClusterConfig, Recipe, RecipeError
from rl_pipeline.ray_reaper import watch
from rl_pipeline.workers.group import (
    ActorGroup,
    Demand,
    NodeInfo,
    Placement,
    Resources,
    SharedBundles,
    actor_node_id,
    check_cluster_fits,
    cluster_nodes,
)

log = logging.getLogger(__name__)


@contextlib.contextmanager
def connect(cfg: ClusterConfig):
    """Yield with Ray initialised; a Ray already initialised by the caller (tests) is reused."""
    if ray.is_initialized():
        yield
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, **console.ray_logging())
        log.info("cluster resources: %s", ray.cluster_resources())
        if not console.verbose():
            log.info("the actors' output stays in each node's Ray logs (rlp --verbose shows it here)")
    else:
        context = ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, **console.ray_logging())
        # The phrase "Started a local Ray instance" is Ray's own (tests look for it).
        log.info("Started a local Ray instance; the actors' output (vLLM, DeepSpeed) is in %s/logs%s",
                 context.address_info["session_dir"], "" if console.verbose() else " (rlp --verbose shows it here)")
    reaper = None
    try:
        if not address:  # the local instance dies with this process, however it dies
            reaper = watch(context.address_info["session_dir"])
        yield
    finally:
        ray.shutdown()
        if reaper is not None:
            reaper.close()


@dataclass
class GRPOPlacement:
    """One Placement per GRPO role; `reference` is None when the KL term is off."""

    trainer: Placement
    rollout: Placement
    reward: Placement
    reference: Placement | None
    teacher: Placement | None = None  # on-policy distillation (recipe `teacher:`), placed like the reference

    def demands(self, recipe: Recipe) -> list[Demand]:
        out = []
        if self.trainer.shared is None:
            out.append(Demand("trainer", recipe.trainer.num_ranks, self.trainer.resources, self.trainer.strategy))
            out.append(Demand("rollout", recipe.rollout.num_engines, self.rollout.resources, self.rollout.strategy))
        if self.reference is not None:
            out.append(Demand("reference", recipe.grpo.reference_replicas, self.reference.resources,
                              self.reference.strategy))
        if self.teacher is not None:
            out.append(Demand("teacher", recipe.teacher.replicas, self.teacher.resources, self.teacher.strategy))
        if recipe.rewards is not None:
            out.append(Demand("reward", 1, self.reward.resources, "PACK"))
        return out


def plan_grpo(recipe: Recipe, nodes: list[NodeInfo] | None = None) -> GRPOPlacement:
    """Per-role placements for a GRPO job, checked against the cluster's live nodes.

    With `cluster.colocate` this reserves the shared trainer+rollout bundles (the only thing it
    reserves); everything else is reserved by the roles' own `start`. Raises RecipeError for a
    recipe that cannot colocate and PlacementError naming what the cluster lacks.
    """
    recipe.require("grpo", "rollout")  # rewards may be absent in pure on-policy distillation (recipe `teacher:`)
    nodes = cluster_nodes() if nodes is None else nodes
    has_gpus = any(n.resources.get("GPU", 0) > 0 for n in nodes)
    c, p, t, r = recipe.cluster, recipe.cluster.placement, recipe.trainer, recipe.rollout

    def pin(section, cpus: float, gpus: float) -> Resources:
        return Resources(cpus, gpus, dict(section.resources) or None, dict(section.node_labels) or None)

    trainer = pin(p.trainer, t.cpus_per_rank, t.gpus_per_rank)
    engine_gpus = r.gpus_per_engine if r.gpus_per_engine is not None else (
        float(r.tensor_parallel_size) if has_gpus else 0.0)
    if c.colocate:
        _check_colocation(recipe, has_gpus, engine_gpus)
        rollout = Resources(r.cpus_per_engine, engine_gpus)  # pinned through the shared bundles
    else:
        rollout = pin(p.rollout, r.cpus_per_engine, engine_gpus)
    ref_gpus = p.reference.gpus if p.reference.gpus is not None else t.gpus_per_rank
    strategy = c.placement_strategy
    plan = GRPOPlacement(
        trainer=Placement(trainer, p.trainer.strategy or strategy, ready_timeout_s=c.ready_timeout_s),
        rollout=Placement(rollout, p.rollout.strategy or strategy, ready_timeout_s=c.ready_timeout_s),
        reward=Placement(pin(p.reward, p.reward.cpus, 0.0), ready_timeout_s=c.ready_timeout_s),
        # LoRA: the frozen base on the trainer ranks is the reference (adapters off); no role of its own.
        reference=None if recipe.grpo.kl_coef == 0 or recipe.trainer.lora is not None else Placement(
            pin(p.reference, p.reference.cpus, ref_gpus), p.reference.strategy or strategy,
            ready_timeout_s=c.ready_timeout_s),
    )
    if recipe.teacher is not None:
        teacher_gpus = p.teacher.gpus if p.teacher.gpus is not None else t.gpus_per_rank
        plan.teacher = Placement(pin(p.teacher, p.teacher.cpus, teacher_gpus), p.teacher.strategy or strategy,
                                 ready_timeout_s=c.ready_timeout_s)
    demands = plan.demands(recipe)
    if c.colocate:
        # The shared bundles replace the trainer's and the engines' own (not yet attached above).
        demands = [d for d in demands if d.role not in ("trainer", "rollout")]
        demands.insert(0, Demand("trainer+rollout (colocated)", t.num_ranks, trainer + rollout, plan.trainer.strategy))
    check_cluster_fits(demands, nodes)
    if c.colocate:
        shared = SharedBundles("trainer+rollout (colocated)", t.num_ranks, trainer + rollout, plan.trainer.strategy,
                               c.ready_timeout_s)
        plan.trainer.shared = plan.rollout.shared = shared
    return plan


def _check_colocation(recipe: Recipe, has_gpus: bool, engine_gpus: float) -> None:
    t, r = recipe.trainer, recipe.rollout
    problems = []
    if r.num_engines != t.num_ranks:
        problems.append(f"rollout.num_engines ({r.num_engines}) must equal trainer.num_ranks ({t.num_ranks}): "
                        "engine i shares bundle i with trainer rank i")
    if r.tensor_parallel_size != 1:
        problems.append(f"rollout.tensor_parallel_size must be 1 (got {r.tensor_parallel_size}): a colocated engine "
                        "sees only its share of the trainer rank's GPU")
    if has_gpus and t.gpus_per_rank > 0 and engine_gpus > 0 and t.gpus_per_rank + engine_gpus > 1 + 1e-9:
        problems.append(f"trainer.gpus_per_rank ({t.gpus_per_rank:g}) + rollout.gpus_per_engine ({engine_gpus:g}) "
                        "must be <= 1 so both get the same GPU (e.g. 0.5 + 0.5; keep rollout.gpu_memory_utilization "
                        "low enough to leave the trainer room)")
    if problems:
        raise RecipeError("cluster.colocate: " + "; ".join(problems))


def record_placement(run_dir: str | Path | None, roles: dict[str, Any]) -> dict:
    """Log the node of every actor of each role and write `placement.json` to the run directory.

    `roles` maps a role name to an ActorGroup, a single actor handle, or None (role not started).
    The file maps role -> node ids (actor order) and node id -> address, resources, labels.
    """
    refs = {}
    for role, part in roles.items():
        if part is None:
            continue
        actors = part.actors if isinstance(part, ActorGroup) else [part]
        refs[role] = [actor_node_id(a) for a in actors]
    placed = {role: ray.get(r) for role, r in refs.items()}
    nodes = {n.node_id: n for n in cluster_nodes()}
    used = {nid for ids in placed.values() for nid in ids}
    record = {
        "roles": placed,
        "nodes": {nid: {"address": nodes[nid].address if nid in nodes else "",
                        "resources": _custom(nodes[nid].resources) if nid in nodes else {},
                        "labels": nodes[nid].labels if nid in nodes else {}}
                  for nid in sorted(used)},
    }
    for role, ids in placed.items():
        log.info("placement: %s on node(s) %s", role, ", ".join(
            f"{nid[:12]} ({record['nodes'][nid]['address']} {record['nodes'][nid]['resources']})" for nid in ids))
    if run_dir is not None:
        atomic_write_text(Path(run_dir) / "placement.json", json.dumps(record, indent=2))
    return record


def _custom(resources: dict[str, float]) -> dict[str, float]:
    """CPU, GPU and custom resources of a node (no memory or per-node ip resources)."""
    return {k: v for k, v in resources.items() if not k.startswith("node:") and "memory" not in k}

"""Where a recipe runs and what it keeps: the cluster (placement, colocation, hybrid engine,
memory check), tracking and checkpoint sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rl_pipeline.config.base import Section

Strategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]
# Resources each role already sizes in its own section (trainer.gpus_per_rank, ...); pinning takes custom ones.
_BUILTIN_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}


class NodePinning(Section):
    """Pin a role's actors to some nodes: by a custom resource that only those nodes have
    (`ray start --resources='{"rollout_node": 1}'`; each actor reserves the amount given here,
    e.g. 0.01), or by node labels (`ray start --labels=pool=rollout`), or both."""

    resources: dict[str, float] = Field({}, description="custom resources each actor reserves, e.g. {rollout_node: 0.01}")
    node_labels: dict[str, str] = Field({}, description="labels every node of the role must carry (ray start --labels)")

    @model_validator(mode="after")
    def _custom_resources_only(self) -> "NodePinning":
        for name, amount in self.resources.items():
            if name in _BUILTIN_RESOURCES or name.startswith("node:"):
                raise ValueError(f"'{name}' is not a custom resource; CPUs and GPUs per actor are set in the role's "
                                 "own keys (trainer.gpus_per_rank, rollout.gpus_per_engine, placement.reference.gpus)")
            if amount <= 0:
                raise ValueError(f"resource '{name}': amount must be > 0 (got {amount})")
        return self


class RolePlacement(NodePinning):
    """Placement of a role with several actors (one placement-group bundle per actor)."""

    strategy: Strategy | None = Field(None, description="placement-group strategy; None = cluster.placement_strategy")


class ReferencePlacement(RolePlacement):
    cpus: float = Field(0.25, ge=0, description="Ray CPUs per reference replica")
    gpus: float | None = Field(None, ge=0, description="GPUs per reference replica; None = trainer.gpus_per_rank")


class RewardPlacement(NodePinning):
    """The reward service is one actor; its worker pool runs as processes of that actor."""

    cpus: float = Field(0.0, ge=0, description="Ray CPUs the reward-service actor reserves")


class PlacementConfig(Section):
    """Where each role runs; a role left out runs wherever Ray finds room."""

    trainer: RolePlacement = Field(default_factory=RolePlacement)
    rollout: RolePlacement = Field(default_factory=RolePlacement)
    reference: ReferencePlacement = Field(default_factory=ReferencePlacement)
    teacher: ReferencePlacement = Field(default_factory=ReferencePlacement,
                                        description="on-policy distillation teacher; gpus None = trainer.gpus_per_rank")
    reward: RewardPlacement = Field(default_factory=RewardPlacement)


class ClusterConfig(Section):
    address: str | None = Field(None, description="Ray address to join; None = RAY_ADDRESS, else start a local instance")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local instance (default: all)")
    placement_strategy: Strategy = Field("PACK", description="default placement-group strategy of every role")
    colocate: bool = Field(
        False,
        description="trainer rank i and rollout engine i share placement-group bundle i, so on GPUs they share "
        "the same device(s) (set trainer.gpus_per_rank + rollout.gpus_per_engine <= 1); needs "
        "rollout.num_engines == trainer.num_ranks and rollout.tensor_parallel_size 1. "
        "False: separate bundles (separate GPUs)",
    )
    hybrid_engine: bool | None = Field(
        None,
        description="colocated GPUs shared by time instead of split by memory: the engines sleep (rollout."
        "sleep_level) while the trainer trains, and the trainer's states go to CPU memory while the engines "
        "generate, so each side gets most of the card (set rollout.gpu_memory_utilization high, e.g. 0.8). "
        "None = on for colocated GPUs when the memory plan (rl_pipeline/memory_plan.py) says trainer and engine "
        "do not fit on the card together (taking turns costs about a tenth of a 1.5B step); it needs colocate. On CPU the "
        "switches are no-ops",
    )
    memory_check: bool = Field(
        True,
        description="before any actor starts on GPUs, estimate each role's memory from the model's config.json and "
        "the recipe and refuse a plan that cannot fit (rl_pipeline/memory_plan.py); false skips it",
    )
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    ready_timeout_s: float = Field(
        120.0, gt=0,
        description="how long to wait for resources that exist but are held by others before failing",
    )

    @model_validator(mode="after")
    def _hybrid_engine_needs_colocation(self) -> "ClusterConfig":
        if self.hybrid_engine and not self.colocate:
            raise ValueError("hybrid_engine needs colocate: true (it time-shares the GPUs that trainer ranks and "
                             "engines share); separated layouts keep both resident")
        return self

    @model_validator(mode="after")
    def _colocated_rollout_follows_trainer(self) -> "ClusterConfig":
        if self.colocate and self.placement.rollout != RolePlacement():
            raise ValueError("placement.rollout must be left unset when colocate is true: colocated engines share "
                             "the trainer's bundles, pin both with placement.trainer")
        return self


class TrackingConfig(Section):
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "rl_pipeline"
    wandb_mode: Literal["online", "offline"] = "offline"


class CheckpointConfig(Section):
    keep_last: int = Field(2, ge=1)

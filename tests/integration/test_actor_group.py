"""ActorGroup placement on a real local Ray (2 CPUs, no GPUs), with trivial actors:
colocated roles share bundles and the shared group is released by its last user; custom
resources no node has fail at once with the resource named; a replacement actor that does not
come up fails within the group's ready timeout instead of hanging."""

from __future__ import annotations

import time

import pytest
import ray
from ray.util.placement_group import placement_group_table

from rl_pipeline.workers.group import ActorGroup, ClusterShortfall, PlacementError, Resources, SharedBundles


class Where:
    def __init__(self, tag: str = "") -> None:
        self.tag = tag

    def bundle(self) -> tuple[str, int]:
        ctx = ray.get_runtime_context()
        return ctx.get_node_id(), ctx.get_assigned_resources().get("CPU", 0.0)


def test_colocated_groups_share_bundles_and_release_them_together(ray_local):
    shared = SharedBundles("trainer+rollout", 2, Resources(0.2) + Resources(0.1), "PACK", ready_timeout_s=60)
    trainer = ActorGroup.start("trainer", Where, 2, Resources(0.2), shared=shared)
    rollout = ActorGroup.start("rollout", Where, 2, Resources(0.1), shared=shared)
    try:
        assert shared.users == 2
        # Actor i of each role sits in bundle i of the same placement group.
        assert trainer.placement_group.id == rollout.placement_group.id
        assert trainer.node_ids() == rollout.node_ids()
        assert [cpus for _, cpus in trainer.call_all(Where.bundle)] == [pytest.approx(0.2)] * 2
        with pytest.raises(PlacementError, match="3 actors cannot share the 2 bundles"):
            ActorGroup.start("reference", Where, 3, Resources(0.1), shared=shared)
    finally:
        trainer.shutdown()
        assert placement_group_table(shared.placement_group)["state"] == "CREATED"  # rollout still uses it
        rollout.shutdown()
    deadline = time.monotonic() + 30
    while placement_group_table(shared.placement_group)["state"] != "REMOVED":
        assert time.monotonic() < deadline, "the shared placement group was never removed"
        time.sleep(0.2)


def test_missing_custom_resource_fails_before_reserving(ray_local):
    t0 = time.monotonic()
    with pytest.raises(ClusterShortfall, match=r"needs 0.02 gpu_pool \(rollout 2 x 0.01\) but no node has it"):
        ActorGroup.start("rollout", Where, 2, Resources(0.1, custom={"gpu_pool": 0.01}), ready_timeout_s=600)
    assert time.monotonic() - t0 < 10


class SlowStart:
    def __init__(self) -> None:
        time.sleep(60)


def test_restart_that_does_not_come_up_is_bounded(ray_local):
    group = ActorGroup.start("rollout", Where, 1, Resources(0.1), ready_timeout_s=120)
    try:
        first = group.actors[0]
        replacement = group.restart(0, ("again",))
        assert replacement is not first and len(group.node_ids()) == 1
        # A replacement that never gets up (on a cluster: its node died, nothing else can host
        # its bundle) must fail within the group's ready timeout, not hang the driver.
        group._spawn.update(remote_cls=ray.remote(SlowStart), ready_timeout_s=3)
        t0 = time.monotonic()
        with pytest.raises(PlacementError, match="replacement of actor 0 did not start within 3s"):
            group.restart(0)
        assert time.monotonic() - t0 < 15
    finally:
        group.shutdown()

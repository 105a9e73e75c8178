"""Placement planning without Ray: the recipe's `cluster` section, the pure feasibility check
(`find_shortfalls`) against hand-made nodes, and the per-role plan of a GRPO recipe."""

from __future__ import annotations

import pytest

from rl_pipeline.cluster import plan_grpo
from rl_pipeline.config import RecipeError, parse_recipe
from rl_pipeline.workers.group import Demand, NodeInfo, PlacementError, Resources, check_cluster_fits, find_shortfalls

HEAD = NodeInfo("a" * 56, {"CPU": 1.0, "node_a": 1.0, "memory": 1e9}, {}, "10.0.0.1")
WORKER = NodeInfo("b" * 56, {"CPU": 1.0, "node_b": 1.0}, {"pool": "rollout"}, "10.0.0.2")
GPU_NODE = NodeInfo("c" * 56, {"CPU": 8.0, "GPU": 2.0}, {}, "10.0.0.3")


def recipe(**cluster) -> dict:
    return {
        "model": {"path": "m"},
        "data": {"train": {"path": "t.jsonl"}},
        "trainer": {"num_ranks": 1, "cpus_per_rank": 0.5},
        "rollout": {"num_engines": 1, "cpus_per_engine": 0.25},
        "grpo": {"steps": 1},
        "rewards": {"functions": [{"name": "math"}]},
        "cluster": cluster,
    }


def test_placement_keys_are_strict_and_named():
    with pytest.raises(RecipeError, match=r"cluster\.placement\.trainr: unknown key"):
        parse_recipe(recipe(placement={"trainr": {}}))
    with pytest.raises(RecipeError, match=r"cluster\.placement\.rollout\.strategy"):
        parse_recipe(recipe(placement={"rollout": {"strategy": "TIGHT"}}))
    with pytest.raises(RecipeError, match="'GPU' is not a custom resource"):
        parse_recipe(recipe(placement={"trainer": {"resources": {"GPU": 1}}}))
    with pytest.raises(RecipeError, match="amount must be > 0"):
        parse_recipe(recipe(placement={"trainer": {"resources": {"node_a": 0}}}))
    with pytest.raises(RecipeError, match=r"cluster\.placement\.reward\.strategy: unknown key"):
        parse_recipe(recipe(placement={"reward": {"strategy": "PACK"}}))  # one actor: no strategy
    with pytest.raises(RecipeError, match="placement.rollout must be left unset when colocate"):
        parse_recipe(recipe(colocate=True, placement={"rollout": {"resources": {"node_b": 0.01}}}))


def test_missing_custom_resource_is_named():
    demand = Demand("rollout", 1, Resources(0.25, custom={"node_c": 0.01}))
    problems = find_shortfalls([demand], [HEAD, WORKER])
    assert len(problems) == 1
    assert "needs 0.01 node_c (rollout 1 x 0.01) but no node has it" in problems[0]
    assert "node_a" in problems[0] and "node_b" in problems[0]  # says what the cluster does have


def test_totals_over_roles_name_each_role():
    demands = [Demand("trainer", 2, Resources(0.5, gpus=1)), Demand("rollout", 1, Resources(0.25, gpus=1))]
    problems = find_shortfalls(demands, [GPU_NODE])
    # 2 x 1 + 1 x 1 = 3 GPUs asked, the node has 2.
    assert problems == ["needs 3 GPU (trainer 2 x 1, rollout 1 x 1) but the cluster has 2 (cluster resources: CPU, GPU)"]


def test_fractional_cpus_fit_exactly():
    # node_a: 1 CPU; two bundles of 0.5 fit (0.5 + 0.5 = 1.0), three do not.
    pin = {"node_a": 0.01}
    assert find_shortfalls([Demand("trainer", 2, Resources(0.5, custom=pin), "STRICT_PACK")], [HEAD, WORKER]) == []
    # 3 x 0.5 = 1.5 CPU of 2 in total, but only node_a's 1 CPU can take them.
    [problem] = find_shortfalls([Demand("trainer", 3, Resources(0.5, custom=pin))], [HEAD, WORKER])
    assert "trainer: 3 x {CPU: 0.5, node_a: 0.01} do not fit" in problem and "room for 2" in problem


def test_strategies_need_the_right_node_shapes():
    two_small = [NodeInfo("x", {"CPU": 1.0}), NodeInfo("y", {"CPU": 1.0})]
    # 2 x 0.75 CPU: 1.5 of 2 CPUs in total, but each node fits one bundle only.
    assert find_shortfalls([Demand("trainer", 2, Resources(0.75), "PACK")], two_small) == []
    assert find_shortfalls([Demand("trainer", 2, Resources(0.75), "STRICT_SPREAD")], two_small) == []
    [strict_pack] = find_shortfalls([Demand("trainer", 2, Resources(0.75), "STRICT_PACK")], two_small)
    assert "STRICT_PACK needs one node with room for all 2; the largest node has room for 1" in strict_pack
    [spread] = find_shortfalls([Demand("rollout", 3, Resources(0.25), "STRICT_SPREAD")], two_small)
    assert "STRICT_SPREAD needs 3 nodes; only 2 node(s) fit one" in spread
    [split] = find_shortfalls([Demand("rollout", 3, Resources(0.6))], two_small)  # 1.8 <= 2 CPUs, 1 per node
    assert "do not fit: each must fit on one node and the nodes have room for 2" in split


def test_node_labels_select_nodes():
    labelled = Resources(0.25, labels={"pool": "rollout"})
    assert find_shortfalls([Demand("rollout", 1, labelled)], [HEAD, WORKER]) == []
    # WORKER alone carries the label and has 1 CPU: five 0.25-CPU engines do not fit there.
    [problem] = find_shortfalls([Demand("rollout", 5, labelled)], [HEAD, WORKER])
    assert "on nodes with labels {'pool': 'rollout'} have room for 4" in problem
    [problem] = find_shortfalls([Demand("rollout", 1, Resources(0.25, labels={"pool": "gpu"}))], [HEAD, WORKER])
    assert "no node carries the labels {'pool': 'gpu'}; node labels in the cluster: pool=rollout" in problem


def test_check_cluster_fits_lists_every_problem_and_the_nodes():
    demands = [Demand("trainer", 1, Resources(0.5, custom={"node_x": 0.01})),
               Demand("rollout", 1, Resources(0.25, gpus=1))]
    with pytest.raises(PlacementError) as err:
        check_cluster_fits(demands, [HEAD, WORKER])
    text = str(err.value)
    assert "node_x" in text and "1 GPU" in text and "10.0.0.2" in text


def test_plan_pins_roles_and_checks_before_starting():
    raw = recipe(placement={"trainer": {"resources": {"node_a": 0.01}, "strategy": "STRICT_PACK"},
                            "rollout": {"resources": {"node_b": 0.01}}})
    plan = plan_grpo(parse_recipe(raw), nodes=[HEAD, WORKER])
    assert plan.trainer.resources.bundle() == {"CPU": 0.5, "node_a": 0.01}
    assert plan.trainer.strategy == "STRICT_PACK" and plan.rollout.strategy == "PACK"
    assert plan.rollout.resources.bundle() == {"CPU": 0.25, "node_b": 0.01}
    assert plan.reference is None  # kl_coef 0
    assert plan.reward.resources.bundle() == {"CPU": 0.01}  # zero-CPU actor
    raw["cluster"]["placement"]["rollout"]["resources"] = {"node_b": 0.01, "node_q": 1}
    raw["trainer"]["num_ranks"] = 3
    with pytest.raises(PlacementError) as err:
        plan_grpo(parse_recipe(raw), nodes=[HEAD, WORKER])
    assert "node_q" in str(err.value) and "trainer: 3 x {CPU: 0.5, node_a: 0.01}" in str(err.value)


def test_plan_defaults_engine_gpus_to_tensor_parallel_size_on_gpu_clusters():
    raw = recipe()
    raw["rollout"].update(tensor_parallel_size=2)
    raw["trainer"].update(gpus_per_rank=0)
    raw["grpo"]["kl_coef"] = 0.1
    raw["cluster"]["placement"] = {"reference": {"gpus": 0}}
    plan = plan_grpo(parse_recipe(raw), nodes=[GPU_NODE])
    assert plan.rollout.resources.gpus == 2.0
    assert plan.reference is not None and plan.reference.resources.gpus == 0.0
    cpu_node = NodeInfo("d" * 56, {"CPU": 4.0})
    assert plan_grpo(parse_recipe(raw), nodes=[cpu_node]).rollout.resources.gpus == 0.0  # CPU cluster


def test_colocation_rules_are_checked_with_the_keys_named():
    raw = recipe(colocate=True)
    raw["rollout"]["num_engines"] = 2
    with pytest.raises(RecipeError, match=r"rollout.num_engines \(2\) must equal trainer.num_ranks \(1\)"):
        plan_grpo(parse_recipe(raw), nodes=[GPU_NODE])
    raw["rollout"].update(num_engines=1, gpus_per_engine=0.75)
    raw["trainer"]["gpus_per_rank"] = 0.5
    with pytest.raises(RecipeError, match=r"trainer.gpus_per_rank \(0.5\) \+ rollout.gpus_per_engine \(0.75\)"):
        plan_grpo(parse_recipe(raw), nodes=[GPU_NODE])


def test_colocated_bundle_is_the_sum_of_both_roles():
    both = Resources(0.5, 0.5, {"node_a": 0.01}, {"zone": "a"}) + Resources(0.25, 0.5)
    assert both.bundle() == {"CPU": 0.75, "GPU": 1.0, "node_a": 0.01}
    assert both.labels == {"zone": "a"}
    with pytest.raises(PlacementError, match="node label 'zone'"):
        _ = Resources(labels={"zone": "a"}) + Resources(labels={"zone": "b"})


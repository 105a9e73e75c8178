"""Reward-model pieces without Ray: the Bradley-Terry loss and its margin and centering terms
(hand-computed), the global pair normaliser, pair tokenization as the reward_model reward sees
it, the bad-input errors of `rlp rm` (before any actor), and preference-pair selection."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rl_pipeline.algorithms.rm import bradley_terry_losses, pair_counts, rm_loss
from rl_pipeline.config import RecipeError, parse_recipe
from rl_pipeline.pipelines.distill import Sample, pick_pair


def test_bradley_terry_loss_on_known_rewards():
    # pairs (2, 0) and (0, 0): -log sigmoid(2) = log(1 + e^-2) = 0.126928, -log sigmoid(0) = log 2 = 0.693147;
    # pair mean over a global batch of 2: (0.126928 + 0.693147) / 2 = 0.410038
    loss = rm_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]), global_pairs=2)
    assert loss.item() == pytest.approx(0.4100378, abs=1e-6)


def test_margin_shifts_the_gap():
    # r_c - r_r = 1 with margin 1: -log sigmoid(0) = log 2; with margin 3: -log sigmoid(-2) = log(1 + e^2) = 2.126928
    losses = bradley_terry_losses(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 3.0]))
    assert losses.tolist() == pytest.approx([math.log(2), 2.126928], abs=1e-6)


def test_centering_adds_coef_times_squared_pair_sum():
    # pair (1, 2): BT -log sigmoid(-1) = log(1 + e) = 1.313262; centering 0.01 * (1 + 2)^2 = 0.09
    loss = rm_loss(torch.tensor([1.0]), torch.tensor([2.0]), global_pairs=1, center_coef=0.01)
    assert loss.item() == pytest.approx(1.313262 + 0.09, abs=1e-6)


def test_micro_batch_shares_sum_to_the_global_pair_mean():
    chosen, rejected = torch.tensor([0.3, -1.0, 2.0, 0.5, 0.0]), torch.tensor([0.1, 0.4, -2.0, 0.5, 1.0])
    whole = rm_loss(chosen, rejected, 5, center_coef=0.1)
    parts = rm_loss(chosen[:2], rejected[:2], 5, center_coef=0.1) + rm_loss(chosen[2:], rejected[2:], 5, center_coef=0.1)
    assert parts.item() == pytest.approx(whole.item(), abs=1e-6)  # float32 summation order


def test_gradient_of_the_loss_is_minus_one_minus_sigmoid():
    # d/d r_c of -log sigmoid(r_c - r_r) = -(1 - sigmoid(d)); at d = 0: -0.5, and +0.5 for r_r
    chosen, rejected = torch.tensor([0.0], requires_grad=True), torch.tensor([0.0], requires_grad=True)
    rm_loss(chosen, rejected, 1).backward()
    assert (chosen.grad.item(), rejected.grad.item()) == pytest.approx((-0.5, 0.5))


def test_pair_counts_treat_ties_as_wrong():
    counts = pair_counts(torch.tensor([1.0, 0.0, 3.0]), torch.tensor([0.0, 0.0, 4.0]))
    # margins 1, 0, -1 -> sum 0; rewards (1+0+0+0+3+4)/2 = 4
    assert counts == {"correct": 1.0, "margin_sum": 0.0, "reward_sum": 4.0, "pairs": 3}


def test_global_batch_without_pairs_is_an_error():
    with pytest.raises(ValueError, match="no pairs"):
        rm_loss(torch.tensor([]), torch.tensor([]), 0)


# --- pair selection of distill.pairs ---------------------------------------------------------

def pairs_cfg(**kw):
    from rl_pipeline.config import DistillConfig

    return DistillConfig(expert="e", kinds=["original"], pairs={"min_reward_gap": 0.5}, **kw)


def test_pick_pair_takes_best_and_worst_by_reward():
    samples = [Sample(0, "13", 2, False, 0.0), Sample(1, "12", 2, False, 1.0), Sample(2, "14", 2, False, 0.0),
               Sample(3, "12", 2, False, 1.0)]
    (best, worst), why = pick_pair(samples, pairs_cfg())
    assert (best.index, worst.index) == (1, 2)  # ties: the first best, the last worst
    assert why == {"not_selected": 2}


def test_pick_pair_needs_the_reward_gap_and_different_text():
    flat = [Sample(0, "12", 2, False, 1.0), Sample(1, "13", 2, False, 0.7)]
    assert pick_pair(flat, pairs_cfg()) == ([], {"below_threshold": 2})
    same_text = [Sample(0, "12", 2, False, 1.0), Sample(1, " 12", 2, False, 0.0)]
    assert pick_pair(same_text, pairs_cfg())[0] == []


def test_pick_pair_leaves_out_truncated_answers():
    samples = [Sample(0, "12", 2, False, 1.0), Sample(1, "1", 1, True, 0.0), Sample(2, "19", 2, False, 0.0)]
    (best, worst), why = pick_pair(samples, pairs_cfg())
    assert (best.index, worst.index) == (0, 2) and why["truncated"] == 1


def test_pairs_need_the_original_kind_only():
    with pytest.raises(RecipeError, match="set kinds: \\[original\\]"):
        parse_recipe({"model": {"path": "m"}, "distill": {"expert": "e", "system_prompt": "s", "pairs": {}}})
    with pytest.raises(RecipeError, match="system_prompt is required for the 'expert' kind"):
        parse_recipe({"model": {"path": "m"}, "distill": {"expert": "e"}})


# --- `rlp rm` input checks (no actor starts) ---------------------------------------------------

@pytest.fixture
def rm_yaml(tiny_model_dir, tmp_path):
    """Write pairs + an rm recipe (rows replaced by `rows`, recipe keys by dotted `changes`); returns the path."""
    import yaml

    def write(rows=None, **changes) -> str:
        rows = rows or [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i + 2)} for i in range(4)]
        (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        raw = {"model": {"path": str(tiny_model_dir)}, "output_dir": str(tmp_path / "runs"),
               "data": {"train": {"path": str(tmp_path / "pairs.jsonl")}, "max_length": 32},
               "trainer": {"micro_batch_size": 2}, "rm": {"max_steps": 1}}
        for key, value in changes.items():
            node, *path = key.split("__")
            target = raw.setdefault(node, {})
            for part in path[:-1]:
                target = target[part]
            target[path[-1]] = value
        (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
        return str(tmp_path / "recipe.yaml")

    return write


GOOD = {"prompt": "1+1=", "chosen": "2", "rejected": "3"}


@pytest.mark.parametrize("rows, changes, message", [
    ([GOOD, {"prompt": "2+2=", "chosen": "4", "rejected": "4"}], {}, "pairs.jsonl row 1: 'chosen' and 'rejected' are identical"),
    ([GOOD], {"rm__chosen_column": "better"}, "column 'better' (rm.chosen_column) not found"),
    ([{"chosen": "2", "rejected": "3"}], {}, "column 'prompt' (data.train.prompt_column) not found"),
    ([GOOD, {"prompt": "1+1=" * 20, "chosen": "2", "rejected": "3"}], {},
     "1 of 2 pairs in"),
    ([GOOD, {"prompt": "1+1=" * 20, "chosen": "2", "rejected": "3"}], {}, "row 1 ("),
    ([GOOD, {**GOOD, "margin": "big"}], {"rm__margin_column": "margin"}, "row 0: 'margin' (rm.margin_column) must be a number"),
    ([{"prompt": "1+1=", "chosen": 2, "rejected": 3}], {}, "row 0: 'chosen' must be text or a list of {role, content}"),
    ([GOOD], {"rm__eval_every": 1}, "rm.eval_every is set but data.eval is missing"),
    ([GOOD], {"model__path": "/no/such/model"}, "model.path: model '/no/such/model' not found"),
], ids=["identical", "missing-chosen", "missing-prompt", "too-long", "too-long-row", "margin-not-number",
        "side-not-text", "eval-without-data", "missing-model"])
def test_bad_input_exits_2_naming_file_row_and_key_before_any_actor(rm_yaml, rows, changes, message, monkeypatch):
    from typer.testing import CliRunner

    from rl_pipeline.cli import app
    from rl_pipeline.workers.trainer import TrainerGroup

    monkeypatch.setattr(TrainerGroup, "start", lambda *a, **k: pytest.fail("an actor was started"))
    result = CliRunner().invoke(app, ["rm", rm_yaml(rows, **changes)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output


def test_string_pairs_are_tokenized_as_the_reward_model_reward_renders_them(rm_yaml, tiny_model_dir):
    from rl_pipeline.config import load_recipe
    from rl_pipeline.models.loading import load_tokenizer
    from rl_pipeline.pipelines.rm import check_rm_inputs

    inputs = check_rm_inputs(load_recipe(rm_yaml([GOOD])))
    tokenizer = load_tokenizer(str(tiny_model_dir))
    # rewards/model_based.py, input_format auto with a chat template: user turn + assistant turn, no special tokens
    text = tokenizer.apply_chat_template([{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}],
                                         tokenize=False)
    assert inputs.train[0]["chosen"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(inputs.train[0]["rejected"]) == "<|user|>1+1=<|end|><|assistant|>3<|end|>"


def test_conversation_pairs_put_the_prompt_messages_first(rm_yaml, tiny_model_dir):
    from rl_pipeline.config import load_recipe
    from rl_pipeline.models.loading import load_tokenizer
    from rl_pipeline.pipelines.rm import check_rm_inputs

    row = {"prompt": [{"role": "user", "content": "1+1="}], "chosen": [{"role": "assistant", "content": "2"}],
           "rejected": [{"role": "assistant", "content": "3"}], "gap": 0.5}
    inputs = check_rm_inputs(load_recipe(rm_yaml([row], rm__margin_column="gap")))
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert tokenizer.decode(inputs.train[0]["chosen"]) == "<|user|>1+1=<|end|><|assistant|>2<|end|>"
    assert inputs.train[0]["margin"] == 0.5


def test_pipeline_accepts_an_rm_stage_and_seeds_it(tmp_path):
    import yaml

    from rl_pipeline.pipelines.pipeline import load_plan

    stage = {"name": "judge", "kind": "rm", "recipe": {"model": {"path": "{run_dir}/sft/final_model"},
                                                       "data": {"train": {"path": "pairs.jsonl"}}, "rm": {}}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"stages": [stage]}))
    plan = load_plan(path, tmp_path / "run", seed=7)
    assert plan.stages[0].kind == "rm" and plan.stages[0].recipe.rm.seed == 7
    assert plan.stages[0].recipe.model.path == f"{tmp_path / 'run'}/sft/final_model"


def test_rm_help_names_the_sections():
    from typer.testing import CliRunner

    from rl_pipeline.cli import app

    result = CliRunner().invoke(app, ["rm", "--help"])
    assert result.exit_code == 0 and "rm sections" in " ".join(result.output.split())


def test_synthetic_pairs_put_the_right_sum_against_a_different_one(tmp_path):
    import random

    from rl_pipeline.data.synthetic import wrong_answer, write_preference_pairs, write_task

    rng = random.Random(0)
    wrong = [(str(a), wrong_answer(a, rng)) for a in range(0, 199) for _ in range(5)]
    assert all(w != a and w.isdigit() for a, w in wrong)
    assert {len(w) - len(a) for a, w in wrong} >= {-1, 0, 1}  # length mistakes too
    paths = write_task(tmp_path, {"train": 50})
    rows = [json.loads(line) for line in open(write_preference_pairs(paths["train"], tmp_path / "pairs.jsonl"))]
    task = [json.loads(line) for line in open(paths["train"])]
    assert [r["prompt"] for r in rows] == [t["prompt"] for t in task]
    assert all(r["chosen"] == t["ground_truth"] != r["rejected"] for r, t in zip(rows, task))


def test_pair_input_format_renders_prompt_and_completion_as_plain_text(rm_yaml, tiny_model_dir):
    from rl_pipeline.config import load_recipe
    from rl_pipeline.models.loading import load_tokenizer
    from rl_pipeline.pipelines.rm import check_rm_inputs

    inputs = check_rm_inputs(load_recipe(rm_yaml([GOOD], rm__input_format="pair")))
    # rewards/model_based.py with input_format pair: tokenizer(prompt, completion), here the plain concatenation
    assert load_tokenizer(str(tiny_model_dir)).decode(inputs.train[0]["chosen"]) == "1+1=2"


def test_pairs_prompt_template_is_what_the_sampling_model_sees(tiny_model_dir, tmp_path):
    from rl_pipeline.models.loading import load_tokenizer
    from rl_pipeline.pipelines.distill import check_distill_inputs

    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "1+1=", "ground_truth": "2"}) + "\n")

    def prompt_ids(template):
        recipe = parse_recipe({"model": {"path": str(tiny_model_dir)}, "output_dir": str(tmp_path),
                               "data": {"train": {"path": str(tmp_path / "p.jsonl")}, "max_length": 32},
                               "rollout": {"max_tokens": 8}, "rewards": {"functions": [{"name": "math"}]},
                               "distill": {"expert": str(tiny_model_dir), "kinds": ["original"],
                                           "pairs": {"prompt_template": template}}})
        return check_distill_inputs(recipe).problems[0].prompt_ids["original"]

    decode = load_tokenizer(str(tiny_model_dir)).decode
    assert decode(prompt_ids("{prompt}")) == "1+1="  # as grpo.prompt_template "{prompt}" shows the policy
    assert decode(prompt_ids(None)) == "<|user|>1+1=<|end|><|assistant|>"


def test_verdicts_pass_scores_strictly_above_the_threshold():
    from rewards.model_based import verdicts

    assert verdicts([0.5, 0.0, -1.2, 3.0], 0.0) == [1.0, 0.0, 0.0, 1.0]
    assert verdicts([0.5, 0.0, -1.2], -2.0) == [1.0, 1.0, 1.0]


def test_reward_model_with_a_threshold_gives_the_verdict_of_its_own_scores(tiny_model_dir):
    """The same model, the same inputs: with `threshold` every score becomes 1.0 above it, else 0.0
    (the tiny causal LM gets a fresh scalar head, seeded alike for both loads, so its scores
    differ from pair to pair and match between the two)."""
    from rewards.model_based import RewardModel

    prompts, completions = ["07+45="] * 6, ["52", "53", "62", "5", "522", "x"]
    torch.manual_seed(0)
    scores = RewardModel(str(tiny_model_dir), input_format="pair")(prompts, completions)
    middle = sorted(scores)[2]
    torch.manual_seed(0)
    judged = RewardModel(str(tiny_model_dir), input_format="pair", threshold=middle)(prompts, completions)
    assert judged == [1.0 if s > middle else 0.0 for s in scores]
    assert sorted(judged) == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]

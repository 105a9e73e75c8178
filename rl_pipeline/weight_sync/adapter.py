"""The LoRA transport: after each step only the adapter tensors travel, and vLLM serves base + adapter.

With `trainer.lora` (push: adapter) the engines keep the frozen base they started with and
serve it with the current adapter (vLLM's LoRA support). One push:
- trainer rank 0 (`AdapterSender.export_adapter`) packs the adapter tensors in peft's names and
  its adapter_config.json into one blob (a few MB: rank x (in + out) per projection instead of
  in x out), put once in Ray's object store; every engine fetches it;
- each engine (`AdapterFolders`, used by workers/rollout.RolloutEngine.load_adapter) writes it as
  an adapter folder in shared memory (/dev/shm: no disk I/O, and per node, so multi-node needs no
  shared file system), loads it under a new LoRA id and drops the previous one. A new id per
  push keeps vLLM's prefix cache from reusing KV blocks computed with the old adapter.
The same path serves every device: the adapters are small enough that the object store's copy
costs less than setting up NCCL or CUDA IPC.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from rl_pipeline.weight_sync.object_store import ObjectStoreBackend


def encode_adapter(tensors: dict[str, torch.Tensor], config: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save({"tensors": tensors, "config": json.dumps(config)}, buffer)
    return buffer.getvalue()


def decode_adapter(blob: bytes) -> tuple[dict[str, torch.Tensor], dict]:
    payload = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    return payload["tensors"], json.loads(payload["config"])


class AdapterSender:
    """A trainer rank's adapter sender: rank 0's adapter (the ranks of a data-parallel run hold equal copies)."""

    def __init__(self, core) -> None:
        self.core = core  # a tensors.TrainerRank

    def export_adapter(self) -> bytes | None:
        from rl_pipeline.models.lora import adapter_config, adapter_tensors

        if self.core.rank != 0:
            return None
        module = self.core.engine.module
        return encode_adapter(adapter_tensors(module), adapter_config(module))


class AdapterBackend(ObjectStoreBackend):
    """Driver side: the object-store push with the adapter instead of the full weights, loaded by
    every engine under a new LoRA id."""

    name = "lora_adapter"

    def __init__(self) -> None:
        self.version = 0  # the LoRA id of the latest push (vLLM ids start at 1)

    def export(self, trainer):
        return trainer.export_adapter()

    def load(self, engines, ref) -> dict[str, float]:
        self.version += 1
        return engines.load_adapter(ref, self.version)


def _shared_memory_root() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class AdapterFolders:
    """An engine's adapter folders: `rlp-lora-<pid>/v<version>` under /dev/shm (else the temp dir).

    Folders of engines that died without cleaning up (a killed actor runs no exit hooks) are
    removed when the next engine on the node starts.
    """

    def __init__(self) -> None:
        base = Path(_shared_memory_root() or tempfile.gettempdir())
        for stale in base.glob("rlp-lora-*"):
            pid = stale.name.removeprefix("rlp-lora-")
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        self.root = base / f"rlp-lora-{os.getpid()}"
        self.root.mkdir(exist_ok=True)
        self.request: Any = None  # the vLLM LoRARequest every generate call uses

    def write(self, blob: bytes, version: int):
        """Write the adapter; returns (its LoRARequest, the previous request or None)."""
        from vllm.lora.request import LoRARequest

        from rl_pipeline.models.lora import write_adapter

        tensors, config = decode_adapter(blob)
        folder = write_adapter(self.root / f"v{version}", tensors, config)
        previous, self.request = self.request, LoRARequest(f"policy-v{version}", version, str(folder))
        return self.request, previous

    def remove(self, request) -> None:
        shutil.rmtree(request.lora_path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""Hand-overs of shared GPUs (the hybrid engine): trainer ranks and rollout engines take turns with the memory.

Colocated (`cluster.colocate`) GPUs are split by time instead of by memory (`cluster.hybrid_engine`):
while the engines generate, the trainer's DeepSpeed states wait in CPU memory; while the trainer
trains, the engines sleep. Each side gets most of the card: the engines a large KV cache
(`rollout.gpu_memory_utilization`), the trainer room for a model that would not fit next to them.
One GRPO step:

    generate            engines awake (weights + KV cache), trainer states in CPU memory
    hand_to_trainer     engines sleep (rollout.sleep_level)               time/sleep
                        trainer states back on the GPU                    time/onload
    (reference,) train
    hand_to_engines     trainer's master weights, Adam moments, grads out time/offload
                        engines wake their weights                        time/wake
                        push the new weights (CUDA IPC reads the trainer's bf16 weights on the GPU,
                        so those leave last)                              time/sync
                        trainer's bf16 weights out                        time/offload
                        engines wake their KV cache                       time/wake

Start-up follows the same turns: the engines start and sleep, the trainer starts (its start-up
needs the card), then `hand_to_engines` pushes the trainer's weights (after a level-2 sleep the
engines hold none). Checkpoints and the final export need the trainer's states on the GPU:
`trainer_resident()` hands the card to the trainer and back.

With the hybrid engine off (separated layouts, or `hybrid_engine: false`) the same calls only push
the weights, so the GRPO driver reads the same either way. On CPU engines and ranks the switches
are no-ops that still report, so the CPU suite tests the order.

Metrics: time/sleep, time/wake, time/offload, time/onload; on GPUs the memory of each role at each
turn (GiB): memory/trainer_peak_gib/train (the trainer's peak while training),
memory/trainer_gib/generate (what the trainer keeps during generation),
memory/engine_gib/{generate,train} (device memory in use less the trainer's) and
memory/device_used_gib/{generate,train}.
"""

from __future__ import annotations

import contextlib
import logging
import time

from rl_pipeline.config import RecipeError
from rl_pipeline.workers.trainer.memory import TRAINING_STATES, WEIGHTS

log = logging.getLogger(__name__)


class HybridEngine:
    """The driver's side of the hand-overs; `enabled` False keeps only the weight push."""

    def __init__(self, trainer, engines, sync, sleep_level: int = 2, enabled: bool = True,
                 engines_awake: bool = True, events: list[tuple[str, float]] | None = None) -> None:
        """Built once both sides are up (rl_pipeline/policy/policy.py); `engines_awake` False and
        `events` say the engines already slept for the trainer's start-up (`engines_sleep_for_startup`)."""
        self.trainer, self.engines, self.sync = trainer, engines, sync
        self.sleep_level, self.enabled = sleep_level, enabled
        self.events: list[tuple[str, float]] = list(events or [])  # (call, actor-side time): the order, for tests
        # Who holds the card now. A trainer rank starts with its states on the GPU.
        self.engines_awake, self.trainer_on_gpu = engines_awake, True

    def _record(self, name: str, result: dict, timer, phase: str) -> dict:
        self.events.append((name, result["at"]))
        if timer is not None:
            # The actor's own clock: "at" is when the switch ended there.
            timer.add(phase, result["seconds"], at=result["at"] - result["seconds"])
        return result

    @staticmethod
    def engines_sleep_for_startup(engines, sleep_level: int) -> list[tuple[str, float]]:
        """Right after the engines start, before the trainer exists: free the card for the trainer's
        start-up. Returns the event for the schedule's record."""
        return [("engines.sleep", engines.sleep(sleep_level)["at"])]

    def hand_to_trainer(self, timer=None, metrics: dict | None = None) -> None:
        """Engines sleep, trainer states come back to the GPU. Records the generate-phase memory."""
        if not self.enabled:
            return
        if metrics is not None and self._gpu() and self.engines_awake:
            trainer = self.trainer.gpu_memory(reset_peak=True)
            used = self.engines.gpu_memory()["device_used_gib"]
            metrics.update({"memory/device_used_gib/generate": used,
                            "memory/trainer_gib/generate": trainer["reserved_gib"],
                            "memory/engine_gib/generate": used - trainer["reserved_gib"]})
        if self.engines_awake:
            self._record("engines.sleep", self.engines.sleep(self.sleep_level), timer, "sleep")
            self.engines_awake = False
        if not self.trainer_on_gpu:
            self._record("trainer.onload", self.trainer.onload(), timer, "onload")
            self.trainer_on_gpu = True

    def hand_to_engines(self, timer=None, metrics: dict | None = None) -> dict:
        """Push the trainer's weights to the engines (and, hybrid, hand the card back to them).
        Returns the push's sync/* metrics."""
        if not self.enabled:
            return self._push(timer)
        if metrics is not None and self._gpu():
            trainer = self.trainer.gpu_memory()
            used = trainer["device_used_gib"]
            metrics.update({"memory/trainer_peak_gib/train": trainer["peak_gib"],
                            "memory/device_used_gib/train": used,
                            "memory/engine_gib/train": max(0.0, used - trainer["reserved_gib"])})
        if self.engines_awake or not self.trainer_on_gpu:
            raise RuntimeError("hybrid engine: hand_to_engines needs the card with the trainer (call "
                               "hand_to_trainer first)")
        self._record("trainer.offload_training_states", self.trainer.offload(TRAINING_STATES), timer, "offload")
        self._record("engines.wake_weights", self.engines.wake_up(["weights"]), timer, "wake")
        stats = self._push(timer)
        self._record("trainer.offload_weights", self.trainer.offload(WEIGHTS), timer, "offload")
        self.trainer_on_gpu = False
        self._record("engines.wake_kv_cache", self.engines.wake_up(["kv_cache"]), timer, "wake")
        self.engines_awake = True
        return stats

    def push_to_replaced(self) -> None:
        """A replacement engine starts with the model's initial weights: push the trainer's current
        ones to every engine (NCCL: over a rebuilt group). With the hybrid engine the trainer's bf16
        weights come back to the GPU for the push only."""
        self.sync.engines_replaced()
        if self.enabled and not self.trainer_on_gpu:
            self._record("trainer.onload_weights", self.trainer.onload(WEIGHTS), None, "onload")
            self._push(None)
            self._record("trainer.offload_weights", self.trainer.offload(WEIGHTS), None, "offload")
        else:
            self._push(None)

    def _push(self, timer) -> dict:
        self.events.append(("push", time.time()))
        with timer("sync") if timer is not None else contextlib.nullcontext():
            return self.sync.push(self.trainer, self.engines)

    @contextlib.contextmanager
    def trainer_resident(self, push_after: bool = True):
        """The trainer's states on the GPU for a checkpoint or an export, then (push_after) back to
        the engines. A no-op when the hybrid engine is off."""
        if not self.enabled:
            yield
            return
        self.hand_to_trainer()
        yield
        if push_after:
            self.hand_to_engines()

    def _gpu(self) -> bool:
        return str(getattr(self.engines, "device", "cpu")).startswith("cuda")


def check_hybrid_engine(recipe) -> None:
    """Refuse what cannot take turns, before any actor starts."""
    if recipe.cluster.hybrid_engine and recipe.grpo.overlap_generation:
        raise RecipeError("cluster.hybrid_engine: true cannot run with grpo.overlap_generation: true (the engines "
                          "sleep while the trainer trains, so nothing generates ahead); turn one off")

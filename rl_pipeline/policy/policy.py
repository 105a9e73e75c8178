"""The policy: one owner for its weights on the trainer ranks and in the rollout engines.

`Policy.start(recipe, plan)` starts the engines and the trainer ranks together (on shared GPUs the
engines sleep while the trainer starts) and returns them in step. From then on only the policy
moves weights:
- `train(...)` runs one GRPO update on the ranks; the policy `version` (updates applied, counted
  from the run's first step, so it survives a resume) goes up by one;
- `push(...)` gives every engine the trainer's weights (full weights or, for LoRA served as
  adapters, the adapter alone: `weight_push_mode`) and records that the engines hold `version`;
  the engines stamp it on every completion they sample (`Completion.policy_version`);
- hand-overs of shared GPUs (the hybrid engine, policy/handover.py) happen inside `push` and
  `hand_to_trainer`, and `trainer_resident()` brings the trainer's states back for a checkpoint;
- a replaced engine: the rollout group restarts it and calls `restore_engine`, which the policy
  gave it at start; the policy re-pushes the current weights and the version.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from rl_pipeline.policy.handover import HybridEngine

log = logging.getLogger(__name__)


def weight_push_mode(recipe) -> str:
    """"full" (the trainer's weights, LoRA merged in) or "adapter" (engines serve base + adapter and
    get the adapter alone on each push): the one place that picks."""
    from rl_pipeline.models.lora import push_mode

    lora = recipe.trainer.lora
    return "adapter" if lora is not None and push_mode(lora) == "adapter" else "full"


class Policy:
    """Trainer ranks and rollout engines holding one policy; see the module docstring."""

    def __init__(self) -> None:  # use Policy.start
        self.trainer = self.engines = self.handover = self.sync = None
        self.version = 0  # updates applied to the trainer's weights
        self.engine_versions: list[int] = []  # the version each engine holds
        self.pushed = False

    @classmethod
    def start(cls, recipe, plan, total_steps: int, hybrid: bool) -> "Policy":
        """Engines, then (after they sleep, on shared GPUs) the trainer ranks; `plan` is
        rl_pipeline.cluster.plan_grpo's, `hybrid` the memory plan's choice of the hybrid engine."""
        from rl_pipeline.weight_sync import WeightSync
        from rl_pipeline.workers.rollout import RolloutGroup
        from rl_pipeline.workers.trainer import TrainerGroup, TrainerSpec

        policy = cls()
        mode = weight_push_mode(recipe)
        lora = recipe.trainer.lora
        # Engines serving adapters keep their base across a sleep (level 1): only adapters are pushed.
        sleep_level = 1 if mode == "adapter" else recipe.rollout.sleep_level
        policy.engines = RolloutGroup.start(recipe.model.path, recipe.rollout, recipe.grpo.seed,
                                            placement=plan.rollout, lora_rank=lora.rank if mode == "adapter" else None,
                                            restore=policy.restore_engine)
        policy.engine_versions = [0] * len(policy.engines)
        try:
            # The trainer's start-up needs the card the engines just took.
            startup = HybridEngine.engines_sleep_for_startup(policy.engines, sleep_level) if hybrid else []
            # Synchronous GRPO trains while the engines, rewards and reference wait: a CPU rank may
            # take the cores then; generating the next batch meanwhile (overlap) leaves it one.
            spec = TrainerSpec(recipe.model, recipe.trainer, total_steps, recipe.grpo.seed, schedule_unit="grpo_step",
                               alone=not recipe.grpo.overlap_generation)
            policy.trainer = TrainerGroup.start(spec, placement=plan.trainer)
        except BaseException:
            policy.shutdown()
            raise
        policy.sync = WeightSync(adapter_only=mode == "adapter")
        policy.handover = HybridEngine(policy.trainer, policy.engines, policy.sync, sleep_level, enabled=hybrid,
                                       engines_awake=not hybrid, events=startup)
        if lora is not None:
            log.info("LoRA rank %d on %s: %s", lora.rank, ", ".join(lora.target_modules),
                     "engines serve base + adapter; each push sends the adapter only" if mode == "adapter"
                     else "engines get the merged full weights on each push (trainer.lora.push: merged)")
        if hybrid:
            log.info("hybrid engine: engines sleep (level %d) while the trainer trains; trainer states in CPU memory "
                     "while the engines generate", sleep_level)
        return policy

    @property
    def shares_gpus(self) -> bool:
        """True when trainer and engines take turns with the GPUs (the hybrid engine)."""
        return self.handover.enabled

    # ---------------------------------------------------------------- the trainer's side

    def train(self, mini_batches: list, algorithm, step: int, inner_epochs: int,
              temperature: float) -> tuple[dict, dict[int, list[float]]]:
        """One GRPO update on every rank (workers/trainer: grpo_step); the version goes up by one.
        Returns the metrics and the trainer logprobs of the rows with a `report_as` id."""
        result = self.trainer.grpo_step(mini_batches, algorithm, step, inner_epochs, temperature)
        self.version += 1
        return result

    def load_state(self, checkpoint_dir: str, version: int) -> None:
        """A checkpoint's weights and optimiser states; `version` is the updates it had applied."""
        with self.trainer_resident(push_after=False):
            self.trainer.load_state(checkpoint_dir)
        self.version = version

    def save_state(self, checkpoint_dir: str) -> None:
        with self.trainer_resident():
            self.trainer.save_state(checkpoint_dir)

    def save_hf(self, out_dir: str | Path) -> str:
        """The weights as a Hugging Face folder (the run's last act: the card stays with the trainer)."""
        with self.trainer_resident(push_after=False):
            return self.trainer.save_hf(str(out_dir))

    # ---------------------------------------------------------------- the engines' side

    def hand_to_trainer(self, timer=None, metrics: dict | None = None) -> None:
        """Shared GPUs: engines sleep, trainer states back on the card (a no-op otherwise)."""
        self.handover.hand_to_trainer(timer, metrics)

    def push(self, timer=None, metrics: dict | None = None) -> dict:
        """Every engine gets the trainer's weights (shared GPUs: and the card); returns sync/* metrics."""
        stats = self.handover.hand_to_engines(timer, metrics)
        self._engines_hold(self.version)
        return {**stats, "policy/version": float(self.version)}

    def _engines_hold(self, version: int, indices: list[int] | None = None) -> None:
        self.engines.set_policy_version(version, indices)
        for i in range(len(self.engines)) if indices is None else indices:
            self.engine_versions[i] = version
        self.pushed = True

    def restore_engine(self, index: int) -> str:
        """RolloutGroup's `restore`: engine `index` was replaced and holds the model's initial weights.
        Push the current ones (to every engine: the transports push to all) and the version."""
        if not self.pushed:
            return "the model's initial weights, which are still the policy's"
        log.warning("rollout engine %d replaced: pushing the current weights (version %d) to every engine",
                    index, self.version)
        self.handover.push_to_replaced()
        self._engines_hold(self.version)
        return f"the current weights pushed (version {self.version})"

    @contextlib.contextmanager
    def trainer_resident(self, push_after: bool = True):
        """The trainer's states on the GPU (a checkpoint, an export), then back to the engines."""
        with self.handover.trainer_resident(push_after):
            yield

    def shutdown(self) -> None:
        for part in (self.engines, self.trainer):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.shutdown()

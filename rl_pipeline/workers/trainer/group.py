"""The driver's handle on all trainer ranks: start them together, call them together, merge results.

Every call names the rank's method itself (`TrainerWorker.grpo_step`, rl_pipeline/remote.py), so
go-to-definition leads from here to the part that runs it."""

from __future__ import annotations

from rl_pipeline.remote import call
from rl_pipeline.workers.group import merge_switches
from rl_pipeline.workers.trainer.engine import TrainerSpec
from rl_pipeline.workers.trainer.worker import TrainerWorker


class TrainerGroup:
    """The driver's handle on all trainer ranks: start them, then call them together."""

    def __init__(self, group) -> None:
        self.group = group

    @classmethod
    def start(cls, spec: TrainerSpec, strategy: str = "PACK", placement=None) -> "TrainerGroup":
        """`placement` (a group.Placement from rl_pipeline.cluster) overrides strategy and resources."""
        import ray

        from rl_pipeline.workers.group import ActorGroup, Placement, Resources

        cfg = spec.trainer
        n = cfg.num_ranks
        placement = placement or Placement(Resources(cpus=cfg.cpus_per_rank, gpus=cfg.gpus_per_rank), strategy)
        group = ActorGroup.start(
            "trainer", TrainerWorker, n, init_args=[(rank, n, spec) for rank in range(n)], **placement.group_kwargs(),
        )
        addr, port = ray.get(call(group.actors[0], TrainerWorker.node_address))  # rank 0 hosts the rendezvous
        group.call_all(TrainerWorker.setup, addr, port)
        return cls(group)

    def sft_step(self, shards: list[list[list[dict]]], global_target_tokens: int) -> dict:
        """One optimiser step; shards[r] are rank r's micro-batches. Returns global metrics."""
        results = self.group.call_each(TrainerWorker.sft_step, [(s, global_target_tokens) for s in shards])
        return {
            "loss": sum(r["loss_share"] for r in results),
            "grad_norm": results[0]["grad_norm"],
            "lr": results[0]["lr"],
            "tokens": sum(r["tokens"] for r in results),
        }

    def grpo_step(self, mini_batches: list, algorithm, step: int, inner_epochs: int = 1,
                  temperature: float = 1.0) -> tuple[dict, dict[int, list[float]]]:
        """GRPO step `step`: mu epochs of one optimiser step per mini-batch; mini_batches[k] =
        (shards[rank][micro_batch], that mini-batch's global LossNormaliser), as
        GRPOBatch.mini_batches builds them; `algorithm` an AlgorithmSpec. Returns the metrics
        (shares summed over ranks) and the trainer's (pi_old) completion logprobs of the rows that
        carry a `report_as` id, by that id."""
        per_rank = self.group.call_each(TrainerWorker.grpo_step, [
            ([(shards[rank], (norm.tokens, norm.sequences)) for shards, norm in mini_batches], algorithm, step,
             inner_epochs, temperature)
            for rank in range(len(self.group))
        ])
        metrics: dict[str, float] = {}
        for result in per_rank:
            for key, value in result["shares"].items():
                metrics[key] = metrics.get(key, 0.0) + value
        gap_count = sum(r["gap_count"] for r in per_rank)
        metrics["rollout/logprob_diff_mean"] = sum(r["gap_sum"] for r in per_rank) / max(gap_count, 1)
        metrics["rollout/logprob_diff_max"] = max(r["gap_max"] for r in per_rank)
        metrics["policy/grad_norm"] = per_rank[0]["grad_norm"]
        metrics["policy/lr"] = per_rank[0]["lr"]
        return metrics, {k: v for r in per_rank for k, v in r["reported"].items()}

    # ---- hybrid engine: GPU memory switching (workers/trainer/memory.py) ---------------------
    def offload(self, states) -> dict:
        """Every rank moves `states` to CPU memory; the slowest rank's seconds, rank 0's memory."""
        return merge_switches(self.group.call_all(TrainerWorker.offload, list(states)))

    def onload(self, states=None) -> dict:
        """Every rank brings its offloaded states (or only `states`) back to the GPU."""
        return merge_switches(self.group.call_all(TrainerWorker.onload, None if states is None else list(states)))

    def gpu_memory(self, reset_peak: bool = False) -> dict:
        """Rank 0's GPU memory (GiB): allocated, reserved, peak since the last reset, device used."""
        return self.group.call_all(TrainerWorker.gpu_memory, reset_peak)[0]

    def rm_step(self, shards: list[list[list[dict]]], global_pairs: int, margin_scale: float = 0.0,
                center_coef: float = 0.0) -> dict:
        """One reward-model optimiser step; shards[r] are rank r's micro-batches of pairs.
        Returns global metrics: loss, pairwise accuracy, mean margin and mean reward."""
        results = self.group.call_each(TrainerWorker.rm_step, [(s, global_pairs, margin_scale, center_coef) for s in shards])
        return {**_pair_metrics(results), "loss": sum(r["loss_share"] for r in results),
                "grad_norm": results[0]["grad_norm"], "lr": results[0]["lr"], "tokens": sum(r["tokens"] for r in results)}

    def rm_eval(self, shards: list[list[list[dict]]]) -> dict:
        """Held-out pair metrics over every rank's share: loss (Bradley-Terry), accuracy, margin."""
        results = self.group.call_each(TrainerWorker.rm_eval, [(s,) for s in shards])
        pairs = max(sum(r["pairs"] for r in results), 1)
        return {**_pair_metrics(results), "loss": sum(r["loss_sum"] for r in results) / pairs}

    def export_weights(self):
        """ObjectRef of the full weights (torch.save bytes) from rank 0; the driver never
        fetches it, engines do. Waits until every rank took part (ZeRO-3 gathers)."""
        return self._rank0_ref(TrainerWorker.export_weights)

    def export_adapter(self):
        """ObjectRef of rank 0's LoRA adapter (weight_sync/adapter.py), for the engines to fetch."""
        return self._rank0_ref(TrainerWorker.export_adapter)

    def _rank0_ref(self, method):
        """Run `method` on every rank (all take part under ZeRO-3); rank 0's ObjectRef, once ready."""
        import ray

        refs = self.group.submit_all(method)
        ray.get(refs[1:])  # the other ranks return None; this surfaces their errors
        ray.wait(refs[:1])
        return refs[0]

    def node_ids(self) -> list[str]:
        return self.group.call_all(TrainerWorker.node_id)

    def score(self, rows: list[dict], temperature: float = 1.0) -> list[list[float]]:
        """Per-token completion logprobs under the current weights at `temperature`, from rank 0."""
        import ray

        return ray.get(call(self.group.actors[0], TrainerWorker.score, rows, temperature))

    def eval_loss(self, shards: list[list[list[dict]]]) -> float:
        results = self.group.call_each(TrainerWorker.eval_nll, [(s,) for s in shards])
        total, count = map(sum, zip(*results))
        return total / max(count, 1)

    def greedy_accuracy(self, pairs: list[tuple[list[int], list[int]]]) -> float:
        """Fraction of (prompt, target) pairs that greedy decoding reproduces; ranks split them."""
        n = len(self.group)
        matches = self.group.call_each(TrainerWorker.greedy_matches, [(pairs[r::n],) for r in range(n)])
        return sum(matches) / max(len(pairs), 1)

    def save_state(self, checkpoint_dir: str) -> None:
        self.group.call_all(TrainerWorker.save_state, checkpoint_dir)

    def load_state(self, checkpoint_dir: str) -> None:
        self.group.call_all(TrainerWorker.load_state, checkpoint_dir)

    def save_hf(self, out_dir: str) -> str:
        return self.group.call_all(TrainerWorker.save_hf, out_dir)[0]

    def shutdown(self) -> None:
        self.group.shutdown()


def _pair_metrics(results: list[dict]) -> dict[str, float]:
    """Means over all ranks' pairs of the sums algorithms.rm.pair_counts returns."""
    pairs = max(sum(r["pairs"] for r in results), 1)
    return {"accuracy": sum(r["correct"] for r in results) / pairs,
            "margin": sum(r["margin_sum"] for r in results) / pairs,
            "reward_mean": sum(r["reward_sum"] for r in results) / pairs}

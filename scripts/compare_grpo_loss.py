"""Check that the `grpo` algorithm entry computes what an earlier commit's `grpo_policy_loss` did.

    .venv/bin/python scripts/compare_grpo_loss.py REV      (e.g. 294560f, before the algorithm registry)

Reads rl_pipeline/algorithms/grpo.py of REV with `git show`, and for 96 settings (every aggregation,
KL estimator, clip range, with and without the KL term and TIS) compares loss, gradient and every
metric on the same float64 inputs (metrics added since, ADDED_METRICS, aside); exits 1 on the first
difference. The refactor promised no change in behaviour: this holds it to the bit.
"""

from __future__ import annotations

import importlib.util
import itertools
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from rl_pipeline.algorithms import AlgorithmSpec
from rl_pipeline.algorithms.grpo import GRPOLossConfig, LossNormaliser


def load_old(rev: str):
    source = subprocess.run(["git", "show", f"{rev}:rl_pipeline/algorithms/grpo.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_grpo.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_grpo", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_grpo"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


# Metrics the loss gained after the refactor it checks: KL(sampler || pi_old) beside TIS (2026-12-08).
ADDED_METRICS = {"offpolicy/kl_behaviour"}


def main(rev: str) -> int:
    old = load_old(rev)
    torch.manual_seed(0)
    settings = itertools.product(["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"],
                                 ["k1", "k2", "k3", "k3+"], [None, 2.0], [0.0, 0.05], [(0.2, 0.2), (0.2, 0.28)])
    count = 0
    for aggregation, kl, tis, beta, (low, high) in settings:
        n, t = 6, 9
        logp = torch.randn(n, t, dtype=torch.float64) * 0.3 - 1
        old_logp = logp + torch.randn(n, t, dtype=torch.float64) * 0.1
        ref = logp + torch.randn(n, t, dtype=torch.float64) * 0.1
        sampler = old_logp + torch.randn(n, t, dtype=torch.float64) * 0.05
        mask, advantages = torch.rand(n, t) > 0.2, torch.randn(n, dtype=torch.float64)
        knobs = dict(eps_low=low, eps_high=high, beta=beta, kl_estimator=kl, aggregation=aggregation, tis_cap=tis,
                     max_length_norm=t)
        a, b = logp.clone().requires_grad_(True), logp.clone().requires_grad_(True)
        loss_old, metrics_old = old.grpo_policy_loss(
            a, old_logp, advantages, mask, normaliser=old.LossNormaliser.of(mask), config=old.GRPOLossConfig(**knobs),
            ref_logp=ref, sampler_logp=sampler if tis else None)
        entry = AlgorithmSpec("grpo", {}, GRPOLossConfig(**knobs)).build()
        # the trainer receives per-token advantages now (each row's list, collated): [N, T]
        loss_new, metrics_new = entry.loss(b, old_logp, advantages[:, None].expand(n, t), mask,
                                           normaliser=LossNormaliser.of(mask), ref_logp=ref,
                                           sampler_logp=sampler if tis else None)
        loss_old.backward()
        loss_new.backward()
        # Metrics added since REV (a new key is no change of behaviour) are left out of the comparison.
        added = set(metrics_new) - set(metrics_old) - ADDED_METRICS
        same = (torch.equal(loss_old, loss_new) and torch.equal(a.grad, b.grad)
                and set(metrics_old) <= set(metrics_new) and not added
                and all(torch.equal(metrics_old[k], metrics_new[k]) for k in metrics_old))
        if not same:
            print(f"differs at {knobs}: loss {float(loss_old)} vs {float(loss_new)}")
            return 1
        count += 1
    print(f"{count} settings: loss, gradient and every metric bit-identical to {rev}'s grpo_policy_loss")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "HEAD"))

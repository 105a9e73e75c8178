"""The distillation dataset folder: shards written atomically, resume bookkeeping, stats and card.

Layout of `distill.output`:

    data/train-00000.jsonl     kept rows of problem shard 0 (or .parquet); none for an empty shard
    .distill/recipe.yaml       what made the folder (a resumed run must match it)
    .distill/shard-00000.done  JSON counts of shard 0, written after its data file: shard 0 is done
    stats.json                 the sums over every shard (written at the end)
    (rows are SFT chats, or preference pairs with distill.pairs: pair_features/pair_row)
    README.md                  dataset card

`datasets.load_dataset(folder)` finds the `train` split by the file names (`data/train-*`), so
stats.json is not read as data. (A `configs:` block in the card would do the same, but the
library then caches every folder of the same name under one key and serves stale rows.)

A shard's data file goes to a hidden temp name first and is renamed; its `.done` marker follows
the same way. A restart keeps exactly the shards with a marker and redoes the others (a data file
without a marker is overwritten), so no row is lost or written twice. Names under `.distill/`
start with a dot or end in suffixes the data loaders ignore, so `rlp sft` can read the folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rl_pipeline.atomic import atomic_output, atomic_write_text
from rl_pipeline.config import InputError

STATE_DIR = ".distill"
DATA_DIR = "data"


def row_features(components: Iterable[str]):
    """The shards' schema, fixed so every parquet shard agrees (a column of nulls included)."""
    from datasets import Features, List, Value

    return Features({
        "messages": List({"role": Value("string"), "content": Value("string")}),
        "problem_id": Value("string"),
        "kind": Value("string"),
        "sample": Value("int64"),
        "reward": Value("float64"),
        "rewards": {name: Value("float64") for name in components},
        "response_tokens": Value("int64"),
        "expert": Value("string"),
    })


def pair_features():
    """Schema of preference-pair rows (distill.pairs), what `rlp rm` reads with its default columns."""
    from datasets import Features, Value

    return Features({
        "prompt": Value("string"), "chosen": Value("string"), "rejected": Value("string"),
        "margin": Value("float64"), "chosen_reward": Value("float64"), "rejected_reward": Value("float64"),
        "problem_id": Value("string"), "chosen_sample": Value("int64"), "rejected_sample": Value("int64"),
        "model": Value("string"),
    })


def pair_row(problem_id: str, prompt: str, chosen, rejected, model: str) -> dict[str, Any]:
    """One preference row from two curated samples (distill.Sample): margin = their reward gap."""
    return {"prompt": prompt, "chosen": chosen.content, "rejected": rejected.content,
            "margin": chosen.reward - rejected.reward, "chosen_reward": chosen.reward,
            "rejected_reward": rejected.reward, "problem_id": problem_id, "chosen_sample": chosen.index,
            "rejected_sample": rejected.index, "model": model}


class ShardStore:
    """One output folder; `open` checks that an existing folder was made by the same recipe."""

    def __init__(self, root: Path, fmt: str, components: list[str], pairs: bool = False) -> None:
        self.root, self.fmt, self.components = root, fmt, components
        self.features = pair_features() if pairs else row_features(components)
        self.data_dir, self.state_dir = root / DATA_DIR, root / STATE_DIR

    @classmethod
    def open(cls, root: str | Path, fmt: str, components: list[str], fingerprint: str,
             overwrite: bool = False, pairs: bool = False) -> "ShardStore":
        """Create the folder, or resume one whose recipe fingerprint matches; never mix recipes.
        `pairs`: the rows are preference pairs (pair_row), not SFT chats."""
        store = cls(Path(root), fmt, components, pairs)
        marker = store.state_dir / "recipe.yaml"
        if store.root.exists() and overwrite:
            if not marker.exists() and any(store.root.iterdir()):
                raise InputError(f"distill.output: '{root}' is not a distillation output; not deleting it")
            shutil.rmtree(store.root)
        if store.root.exists() and any(store.root.iterdir()):
            if not marker.exists():
                raise InputError(f"distill.output: '{root}' exists and is not a distillation output; "
                                 "choose another folder")
            if marker.read_text() != fingerprint:
                raise InputError(f"distill.output: '{root}' was made by a different recipe (see "
                                 f"{marker}); pass --overwrite to start over or choose another folder")
        store.state_dir.mkdir(parents=True, exist_ok=True)
        store.data_dir.mkdir(parents=True, exist_ok=True)
        if not marker.exists():
            atomic_write_text(marker, fingerprint)
        return store

    def shard_name(self, index: int) -> str:
        return f"train-{index:05d}.{self.fmt}"

    def done(self) -> dict[int, dict[str, Any]]:
        """Counts of every finished shard, by index."""
        finished = {}
        for path in self.state_dir.glob("shard-*.done"):
            finished[int(path.stem.split("-")[1])] = json.loads(path.read_text())
        return finished

    def clean_unfinished(self) -> list[str]:
        """Remove temp files and data files of shards without a marker (a killed run's leftovers)."""
        finished = self.done()
        removed = []
        for path in list(self.data_dir.iterdir()) + list(self.state_dir.glob(".*.tmp")):
            name = path.name
            is_shard = name.startswith("train-")
            if name.endswith(".tmp") or (is_shard and int(name.split("-")[1].split(".")[0]) not in finished):
                path.unlink()
                removed.append(name)
        return removed

    def write_shard(self, index: int, rows: list[dict[str, Any]], counts: dict[str, Any],
                    shown: list[dict[str, Any]] | None = None) -> None:
        """Data file (if any row was kept) and the shard's sample-log rows, each to a temp name ->
        rename; then the shard's marker (a shard without one is redone, its files overwritten)."""
        if rows:
            final = self.data_dir / self.shard_name(index)
            with atomic_output(final) as tmp:
                self._write_rows(rows, tmp)
        atomic_write_text(self.state_dir / f"shard-{index:05d}.samples.jsonl",
                          "".join(json.dumps({**row, "step": index + 1}) + "\n" for row in shown or []))
        atomic_write_text(self.state_dir / f"shard-{index:05d}.done", json.dumps(counts))

    def _write_rows(self, rows: list[dict[str, Any]], path: Path) -> None:
        import datasets

        datasets.disable_progress_bars()  # one bar per shard file would drown the run's own progress
        dataset = datasets.Dataset.from_list(rows, features=self.features)
        if self.fmt == "parquet":
            dataset.to_parquet(str(path))
        else:
            dataset.to_json(str(path), lines=True, force_ascii=False)

    def data_files(self) -> list[Path]:
        return sorted(self.data_dir.glob(f"train-*.{self.fmt}"))

    def finish(self, stats: dict[str, Any], card: str) -> None:
        """stats.json, README.md and samples.jsonl: the finished shards' sample-log rows in shard
        order, "step" = shard index + 1 (what `rlp view` reads)."""
        shards = sorted(self.done())
        logged = [self.state_dir / f"shard-{k:05d}.samples.jsonl" for k in shards]
        atomic_write_text(self.root / "samples.jsonl", "".join(p.read_text() for p in logged if p.exists()))
        atomic_write_text(self.root / "stats.json", json.dumps(stats, indent=2) + "\n")
        atomic_write_text(self.root / "README.md", card)


def dataset_card(stats: dict[str, Any], fmt: str) -> str:
    """A short README: what the rows are, how they were made and kept, how to train on them."""
    d = stats["config"]
    kinds = stats["kinds"]
    lines = [
        "---",
        "tags: [rlp-distill, distillation, rejection-sampling]",
        "---",
        f"# Distillation data from {stats['expert']}",
        "",
        f"{stats['rows']} rows from {stats['problems']} problems of `{stats['source']}`, written by `rlp distill`.",
        "",
        "Each row is one chat in `messages`, generated by the expert and kept by rejection sampling:",
        "- `original`: user problem -> expert response, no system prompt"
        + (" (`<think>` blocks removed)" if d["strip_think_in_original"] else ""),
        "- `expert`: guiding system prompt, user problem -> expert response (reasoning kept)",
        "",
        f"Sampling: {d['samples_per_prompt']} samples per problem and kind, temperature "
        f"{stats['sampling']['temperature']}, top_p {stats['sampling']['top_p']}, "
        f"at most {stats['sampling']['max_tokens']} tokens.",
        f"Kept: policy `{d['keep']}`, reward floor {d['threshold']}"
        + (f", at most {d['max_per_problem']} per problem and kind" if d["max_per_problem"] else "")
        + (", duplicates removed" if d["dedupe"] else "")
        + (", truncated responses dropped" if d["drop_truncated"] else "") + ".",
        f"Rewards: {', '.join(stats['reward_components'])}.",
        "",
        "| kind | generated | kept | acceptance | mean tokens (kept) | mean reward (kept) |",
        "|---|---|---|---|---|---|",
    ]
    for kind, k in kinds.items():
        lines.append(f"| {kind} | {k['generated']} | {k['accepted']} | {k['acceptance_rate']:.3f} | "
                     f"{_fmt(k['response_tokens_mean_accepted'])} | {_fmt(k['reward_mean_accepted'])} |")
    if stats.get("empty_reason"):
        lines += ["", f"**Empty**: {stats['empty_reason']}"]
    elif stats.get("low_acceptance"):
        lines += ["", f"**Warning**: {stats['low_acceptance']}"]
    lines += [
        "",
        "Other columns: `problem_id`, `kind`, `sample` (index among the n samples), `reward` (weighted total),",
        "`rewards` (per component), `response_tokens`, `expert`. Counts are in `stats.json`.",
        "",
        f"Train on it: `rlp sft RECIPE data.train.path=<this folder>/{DATA_DIR}` (the `messages` column is "
        "detected while RECIPE leaves data.train.format at auto).",
        "",
    ]
    return "\n".join(lines)


def preference_card(stats: dict[str, Any]) -> str:
    """README of a preference-pair folder: how pairs were sampled and chosen, how to train on them."""
    d, k = stats["config"], stats["kinds"]["original"]
    return "\n".join([
        "---",
        "tags: [rlp-distill, preference-pairs, reward-model]",
        "---",
        f"# Preference pairs from {stats['expert']}",
        "",
        f"{stats['rows']} pairs from {stats['problems']} problems of `{stats['source']}`, written by `rlp distill` "
        "with `distill.pairs`.",
        "",
        f"Per problem the model sampled {d['samples_per_prompt']} answers (temperature "
        f"{stats['sampling']['temperature']}, top_p {stats['sampling']['top_p']}, at most "
        f"{stats['sampling']['max_tokens']} tokens); the rewards ({', '.join(stats['reward_components'])}) ranked "
        f"them, and the best and the worst became one row when their total rewards differ by at least "
        f"{d['pairs']['min_reward_gap']}" + (" (truncated answers left out)" if d["drop_truncated"] else "") + ".",
        "",
        "| problems | samples | pairs | problems without a pair | mean reward (all samples) | mean reward (chosen) |",
        "|---|---|---|---|---|---|",
        f"| {stats['problems']} | {k['generated']} | {k['accepted']} | {stats['problems'] - k['accepted']} | "
        f"{_fmt(k['reward_mean_generated'])} | {_fmt(k['reward_mean_accepted'])} |",
        "",
        "Columns: `prompt`, `chosen`, `rejected`, `margin` (chosen_reward - rejected_reward), `chosen_reward`,",
        "`rejected_reward`, `problem_id`, `chosen_sample`, `rejected_sample`, `model`. Counts are in `stats.json`.",
        "",
        f"Train a reward model on it: `rlp rm RECIPE data.train.path=<this folder>/{DATA_DIR}` "
        "(add `rm.margin_column=margin` for the margin term).",
        "",
    ])


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"

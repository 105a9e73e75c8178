"""What the policy wrote: whole groups of a GRPO step's batch as rows of the run's samples.jsonl.

Numbers say a run is learning; the completions say what it learned (reward hacking, format
collapse, runaway lengths and tool-call loops show in them first). Every `grpo.log_samples_every`
steps the first `grpo.log_samples_groups` groups of the batch the step trained on become one row
each: the prompt and every completion of the group with its reward, reward components, advantage,
length, finish reason, tool calls, the policy version that sampled it, and the sampler/trainer
logprob gap (mean, and per token with the token texts: the trainer returns the pi_old logprobs of
the samples `mark_shown` marks, `attach_trainer_logprobs` keeps them). The rewards and
advantages are the trained samples' own (`batch.GRPOSample`); the texts and components ride along
in `GRPOSample.shown`, filled by the driver when it scores the rollouts (`shown_fields`).
`tracking.Tracker.log_samples` writes the rows (resume-safe like metrics.jsonl), TensorBoard text
and a wandb table.
"""

from __future__ import annotations

from statistics import mean


def shown_fields(prompt_texts: list[str], completions: list, components: dict[str, list]) -> list[dict]:
    """Per completion (flat, group-contiguous): what the sample log shows beside the ids.
    `prompt_texts` holds one text per completion."""
    shown = []
    for i, (prompt, completion) in enumerate(zip(prompt_texts, completions)):
        entry = {"prompt": prompt, "completion": completion.text, "finish_reason": completion.finish_reason,
                 "components": {name: values[i] for name, values in components.items()}}
        tool_calls = getattr(completion, "tool_calls", None)  # multi-turn trajectories only
        if tool_calls is not None:
            entry["tool_calls"] = [{"name": c.get("name"), "status": c.get("status")} for c in tool_calls]
        shown.append(entry)
    return shown


def _first_groups(batch, groups: int) -> list[tuple[int, list]]:
    """(group, its samples) of the first `groups` groups of `batch`, in batch order."""
    members: dict[int, list] = {}
    for sample in batch.samples:
        members.setdefault(sample.group, []).append(sample)
    return list(members.items())[:groups]


def mark_shown(batch, groups: int) -> None:
    """Give the samples of the groups the log will show a `report_as` id (their index in the batch),
    so the trainer returns their per-token logprobs."""
    shown = {id(s) for _, samples in _first_groups(batch, groups) for s in samples}
    for i, sample in enumerate(batch.samples):
        sample.report_as = i if id(sample) in shown else None


def attach_trainer_logprobs(batch, logprobs: dict[int, list[float]]) -> None:
    """The trainer's logprobs (pi_old, before the update) of the marked samples, into their `shown`."""
    for i, values in logprobs.items():
        sample = batch.samples[i]
        if sample.shown is not None:
            sample.shown["trainer_logprobs"] = values


def group_rows(batch, groups: int, tokenizer=None) -> list[dict]:
    """One row per group of `batch` (the first `groups` in batch order), for samples.jsonl (the
    tracker stamps the step). With a `tokenizer`, completions whose trainer logprobs came back
    also carry their tokens and the per-token gap (pipelines/samples: _token_fields)."""
    rows = []
    for group, samples in _first_groups(batch, groups):
        first = samples[0].shown or {}
        rows.append({"kind": "train", "group": group, "prompt": first.get("prompt"),
                     "completions": [_completion_row(s, tokenizer) for s in samples]})
    return rows


def _completion_row(sample, tokenizer=None) -> dict:
    shown = sample.shown or {}
    row = {
        "text": shown.get("completion"),
        "reward": sample.reward,
        "components": shown.get("components", {}),
        # Advantages are per token (on-policy distillation varies them); a sample's mean stands for it.
        "advantage": mean(sample.advantage) if sample.advantage else 0.0,
        "length": len(sample.completion_ids),
        "finish_reason": shown.get("finish_reason"),
        "trained": sample.trained,
        "policy_version": sample.policy_version,
    }
    if "tool_calls" in shown:
        row["tool_calls"] = shown["tool_calls"]
    if shown.get("trainer_logprobs") is not None:
        row.update(_token_fields(sample, shown["trainer_logprobs"], tokenizer))
    return row


def _token_fields(sample, trainer_logprobs: list[float], tokenizer) -> dict:
    """The sampler/trainer gap of one completion: `logprob_gap`, the mean |sampler - trainer|
    logprob over its sampled tokens (vLLM's numerics vs the trainer's on the same weights; large
    values mean a broken weight sync or a stale sampler); with a tokenizer, per token: its text,
    the signed gap (sampler - trainer; None for a token the model did not sample, a tool result)
    and the advantage where it varies along the completion."""
    sampled = sample.loss_mask or [1] * len(sample.completion_ids)
    gaps = [s - t for s, t in zip(sample.sampler_logprobs, trainer_logprobs)]
    kept = [abs(g) for g, m in zip(gaps, sampled) if m]
    fields = {"logprob_gap": mean(kept) if kept else 0.0}
    if tokenizer is not None:
        fields["tokens"] = [tokenizer.decode([t]) for t in sample.completion_ids]
        fields["token_gap"] = [round(g, 5) if m else None for g, m in zip(gaps, sampled)]
        if len(set(sample.advantage)) > 1:
            fields["token_advantage"] = [round(a, 5) for a in sample.advantage]
    return fields


def as_markdown(rows: list[dict]) -> str:
    """The rows as TensorBoard text: per group (or held-out prompt) the prompt, then a table of its
    completions."""
    parts = []
    for row in rows:
        title = f"group {row['group']}" if row.get("kind") == "train" else "held-out"
        lines = [f"**{title}** prompt: `{_one_line(row['prompt'])}`", "",
                 "| reward | advantage | length | finish | completion |", "|---:|---:|---:|---|---|"]
        for c in row["completions"]:
            advantage = f"{c['advantage']:+.3f}" if "advantage" in c else ""
            lines.append(f"| {_number(c['reward'])} | {advantage} | {c['length']} | {c['finish_reason']} | "
                         f"`{_one_line(c['text'])}` |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def table_rows(step: int, rows: list[dict]) -> tuple[list[str], list[list]]:
    """(columns, data) of a flat table of step `step`, one line per completion (wandb.Table)."""
    columns = ["step", "kind", "group", "prompt", "completion", "reward", "advantage", "length", "finish_reason"]
    data = [[step, row.get("kind"), row.get("group"), row["prompt"], c["text"], c["reward"],
             c.get("advantage"), c["length"], c["finish_reason"]] for row in rows for c in row["completions"]]
    return columns, data


def _number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _one_line(text: str | None, limit: int = 300) -> str:
    text = (text or "").replace("\n", "\\n").replace("|", "\\|").replace("`", "'")
    return text if len(text) <= limit else text[:limit] + "..."

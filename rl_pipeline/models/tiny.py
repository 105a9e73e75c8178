"""The local tiny-model factory: a character-level tokenizer with a chat template and a small
Qwen2-architecture causal LM, saved with `save_pretrained`, loadable by transformers and vLLM.

Nothing is downloaded: tests, the demo and benchmarks build their models here. The tokenizer
maps every printable ASCII character to one token, so arithmetic strings tokenize predictably,
and keeps the chat markers and reasoning tags as single tokens. The chat template below is the
one chat-format training uses (`chat: true`, `messages`); an SFT on plain prompt/completion text
saves its model with the plain-text template instead (`models/loading.RAW_TEXT_TEMPLATE`), so a
model's template is always the format it was trained on.
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass
from pathlib import Path

# Chat markers: special (dropped when decoding with skip_special_tokens).
PAD, EOS, BOS = "<|pad|>", "<|end|>", "<|begin|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
# Reasoning/answer tags are ordinary tokens so that decoded text keeps them for rewards.
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
# Tool use in the style of Qwen2.5's template: the assistant writes
# <tool_call>{"name": ..., "arguments": {...}}</tool_call>, results come back in a tool turn as
# <tool_response>...</tool_response>. Added after the characters so older ids stay where they were.
TOOL_ROLE = "<|tool|>"
TOOL_TAGS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]

# One turn is "<|role|>content<|end|>"; the generation prompt opens the assistant turn, so a
# model learns to end its answer with <|end|>, which is the EOS token. As in Qwen2.5's template,
# an assistant message's `tool_calls` are written as <tool_call> JSON after its content and a
# tool message's content is wrapped in <tool_response>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{% if message['role'] == 'tool' %}{{ '<tool_response>' + message['content'] + '</tool_response>' }}"
    "{% else %}{{ message['content'] or '' }}{% endif %}"
    "{% for call in message.get('tool_calls') or [] %}"
    "{% set fn = call['function'] if call['function'] is defined else call %}"
    "{{ '<tool_call>{\"name\": \"' + fn['name'] + '\", \"arguments\": ' + (fn['arguments'] | tojson) + '}</tool_call>' }}"
    "{% endfor %}"
    "{{ '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@dataclass
class TinyModelSpec:
    """Shape of the tiny model. head_dim is hidden/heads; vLLM-CPU supports 32 and 64."""

    layers: int = 4
    hidden: int = 128
    heads: int = 2
    kv_heads: int = 2
    intermediate: int = 384
    max_positions: int = 512
    tie_embeddings: bool = True
    seed: int = 0
    vocab_size: int | None = None  # None: the characters and markers, rounded up to 64 ids

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        head_dim = self.hidden // self.heads
        if head_dim not in (32, 64, 128):
            raise ValueError(f"head_dim {head_dim} (hidden/heads) is not supported by vLLM-CPU; use 32, 64 or 128")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")


def _byte_level(char: str) -> str:
    """The byte-level BPE spelling of an ASCII character (GPT-2's bytes_to_unicode)."""
    code = ord(char)
    return char if 33 <= code <= 126 else chr(256 + code)


def build_tokenizer(vocab_multiple: int = 64, vocab_size: int | None = None):
    """A PreTrainedTokenizerFast over single characters plus chat markers and reasoning tags,
    padded with `<unusedN>` tokens to `vocab_size` ids (or to a multiple of `vocab_multiple`);
    a real model's vocabulary size (151,936 for Qwen2.5) makes the LM head cost what it costs."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, EOS, BOS, *ROLE_TOKENS]
    # transformers (and so vLLM) loads the tokenizer of a qwen2 model as Qwen2Tokenizer, a
    # byte-level BPE rebuilt from this vocabulary whatever tokenizer_config.json says. Spelling
    # whitespace the byte-level way ("Ġ" for " ") keeps spaces and newlines after a reload.
    base = specials + TAG_TOKENS + ["<unk>"] + [_byte_level(c) for c in string.printable] + [TOOL_ROLE, *TOOL_TAGS]
    vocab = {token: i for i, token in enumerate(base)}
    # Pad the vocabulary to a round size so that every id the model can sample decodes.
    size = vocab_size or -(-len(vocab) // vocab_multiple) * vocab_multiple
    if size < len(vocab):
        raise ValueError(f"vocab_size {size} is smaller than the {len(vocab)} tokens the tokenizer needs")
    for i in range(len(vocab), size):
        vocab[f"<unused{i}>"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(pattern="", behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in [*specials, TOOL_ROLE]])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS + TOOL_TAGS])
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token="<unk>"
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


def build_tiny_model(out_dir: str | Path, spec: TinyModelSpec | None = None, dtype: str = "float32",
                     device: str = "cpu") -> Path:
    """Write a randomly initialised Qwen2 model of `spec`'s shape and its tokenizer to `out_dir`,
    in `dtype`, initialised on `device` (the GPU benches build 7B-shaped models on the GPU)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    spec = spec or TinyModelSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size=spec.vocab_size)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        head_dim=spec.hidden // spec.heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=spec.tie_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype=dtype,
    )
    torch.manual_seed(spec.seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "tiny_model_spec.json").write_text(__import__("json").dumps(asdict(spec), indent=2))
    return out


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())

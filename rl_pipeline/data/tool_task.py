"""A task the tiny model cannot do in its head but can with the `calculator` tool: multiplying
two 3-digit numbers. Rows carry the prompt ("123*456="), the exact product as `ground_truth`
and a tool-use demonstration as `messages` (user, assistant tool call, tool result, assistant
answer) that `rlp sft` trains on (the `messages` column is detected as the format).

`python -m rl_pipeline.data.tool_task OUT_DIR` writes train (512), test (200) and eval (64):
recipes/sft_tools_tiny.yaml validates on eval, recipes/grpo_tools_tiny.yaml holds out test."""

from __future__ import annotations

import json
import random
from pathlib import Path

from rl_pipeline.tools.calls import CALL_CLOSE, CALL_OPEN


def tool_call_text(name: str, arguments: dict) -> str:
    """A call as Qwen2.5 writes it (and the tiny template renders `tool_calls`)."""
    return CALL_OPEN + json.dumps({"name": name, "arguments": arguments}) + CALL_CLOSE


def multiplication_row(a: int, b: int) -> dict:
    expression, product = f"{a}*{b}", str(a * b)
    return {
        "prompt": f"{expression}=",
        "ground_truth": product,
        "messages": [
            {"role": "user", "content": f"{expression}="},
            {"role": "assistant", "content": tool_call_text("calculator", {"expression": expression})},
            {"role": "tool", "content": product},
            {"role": "assistant", "content": product},
        ],
    }


def write_multiplication_task(out_dir: str | Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """`{split}.jsonl` for each split, no product in two splits; returns out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    for split, count in sizes.items():
        rows = []
        while len(rows) < count:
            pair = (rng.randint(100, 999), rng.randint(100, 999))
            if pair not in seen:
                seen.add(pair)
                rows.append(multiplication_row(*pair))
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


# eval comes last so train and test are the rows they were before it existed.
SPLITS = {"train": 512, "test": 200, "eval": 64}

if __name__ == "__main__":  # python -m rl_pipeline.data.tool_task OUT_DIR
    import sys

    target = write_multiplication_task(sys.argv[1] if len(sys.argv) > 1 else "runs/tool-task", SPLITS, seed=0)
    print(f"wrote {', '.join(f'{target}/{split}.jsonl ({n} rows)' for split, n in SPLITS.items())}")

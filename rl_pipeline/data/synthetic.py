"""The demo's synthetic task: arithmetic problems with ground-truth answers, written as normal
dataset files (jsonl) so every later stage reads them like user data.

Each row: `id`, `prompt` (e.g. "07+45="), `ground_truth` ("52"), `completion` (the plain
answer, for SFT on the prompt/completion format) and `reasoning` (an R1-style worked answer,
"<think>7+5=12 0+4+1=5</think>52", digit by digit with carries, for training the demo's
expert; only written for additions). Problems are drawn without replacement from
the whole problem space, so the train/eval/test splits never share a problem.

`wrong_answer` / `write_preference_pairs` turn problems into reward-model pairs: the right answer
(chosen) against a plausible mistake (rejected): a dropped or extra carry, one digit off, a
neighbouring number, a digit too many or too few.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from rl_pipeline.atomic import atomic_output

OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def problem_space_size(digits: int, ops: str) -> int:
    return (10**digits) ** 2 * len(ops)


def make_problems(count: int, digits: int = 2, ops: str = "+", seed: int = 0) -> list[dict]:
    """`count` distinct problems, operands zero-padded to `digits` digits."""
    unknown = set(ops) - set(OPERATIONS)
    if unknown:
        raise ValueError(f"unknown operations {sorted(unknown)}; choose from {sorted(OPERATIONS)}")
    space = problem_space_size(digits, ops)
    if count > space:
        raise ValueError(f"asked for {count} problems but only {space} distinct ones exist at {digits} digits")
    rng = random.Random(seed)
    width, n = digits, 10**digits
    rows = []
    for code in rng.sample(range(space), count):
        op = ops[code // (n * n)]
        a, b = divmod(code % (n * n), n)
        answer = OPERATIONS[op](a, b)
        row = {"prompt": f"{a:0{width}d}{op}{b:0{width}d}=", "ground_truth": str(answer), "completion": str(answer)}
        if op == "+":
            row["reasoning"] = addition_trace(a, b, width)
        rows.append(row)
    return rows


def addition_trace(a: int, b: int, width: int) -> str:
    """Column addition from the units up, one "x+y(+carry)=s" per digit, then the answer."""
    steps, carry = [], 0
    for i in range(width):
        x, y = (a // 10**i) % 10, (b // 10**i) % 10
        total = x + y + carry
        steps.append(f"{x}+{y}{'+1' if carry else ''}={total}")
        carry = total // 10
    return f"<think>{' '.join(steps)}</think>{a + b}"


def write_task(
    out_dir: str | Path, splits: dict[str, int], digits: int = 2, ops: str = "+", seed: int = 0
) -> dict[str, Path]:
    """Write one jsonl per split (e.g. {"train": 9000, "eval": 200, "test": 200}); disjoint splits."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = make_problems(sum(splits.values()), digits, ops, seed)
    paths, start = {}, 0
    for name, size in splits.items():
        path = out / f"{name}.jsonl"
        with atomic_output(path) as tmp, tmp.open("w") as f:
            for i, row in enumerate(rows[start : start + size]):
                f.write(json.dumps({"id": f"{name}-{i}", **row}) + "\n")
        paths[name] = path
        start += size
    return paths


def wrong_answer(answer: int, rng: random.Random) -> str:
    """A plausible wrong answer to a sum: a carry error (+-10), one digit off by one, +-1..3, or a
    length error (a digit too many or too few, the mistakes of a policy that does not stop in time);
    never the answer itself."""
    digits = str(answer)
    while True:
        kind = rng.randrange(5)
        if kind == 0:
            wrong = str(answer + rng.choice((-10, 10)))
        elif kind == 1:
            i = rng.randrange(len(digits))
            wrong = digits[:i] + str((int(digits[i]) + rng.choice((1, 9))) % 10) + digits[i + 1:]
        elif kind == 2:
            wrong = str(answer + rng.choice((-3, -2, -1, 1, 2, 3)))
        elif kind == 3:
            wrong = digits + str(rng.randrange(10))
        else:
            wrong = digits[:-1]
        if wrong and wrong != digits and not wrong.startswith("-"):
            return wrong


def write_preference_pairs(task_file: str | Path, out_file: str | Path, seed: int = 0) -> Path:
    """One (prompt, chosen, rejected) row per problem of a task jsonl: chosen = the right answer,
    rejected = `wrong_answer`; `margin` = 1.0 (correct minus wrong, in reward units)."""
    rng = random.Random(seed)
    out = Path(out_file)
    tmp = out.with_suffix(".jsonl.tmp")
    with Path(task_file).open() as src, tmp.open("w") as dst:
        for line in src:
            row = json.loads(line)
            wrong = wrong_answer(int(row["ground_truth"]), rng)
            dst.write(json.dumps({"id": row["id"], "prompt": row["prompt"], "chosen": row["ground_truth"],
                                  "rejected": wrong, "margin": 1.0}) + "\n")
    tmp.rename(out)
    return out

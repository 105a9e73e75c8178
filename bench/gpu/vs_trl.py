"""GPU benchmark 6: `rlp grpo` against TRL's GRPOTrainer on the same GPU(s), in one invocation.

    python bench/gpu/vs_trl.py [--models 0.5b,1.5b] [--gpus 1] [--steps 6] [--warmup 2]
                               [--prompts 32] [--group 8] [--max-tokens 256] [--systems rlp,trl]

Both systems get the same model (random Qwen2 of bench/gpu/common.py's block shapes with Qwen2.5's
151,936-id vocabulary, bf16), the same prompts (16 random letters, no template), the same reward,
group size, batch (prompts x G samples per optimiser step), max new tokens, temperature 1, learning
rate (1e-6, constant), no KL, and no dynamic sampling (every group trains).

- rlp: the shipped recipe as a user runs it, `python3 -m rl_pipeline.cli grpo recipes/gpu/grpo_1gpu.yaml`
  (one GPU: trainer and engine colocated) or `recipes/gpu/grpo_2gpu.yaml` (two GPUs: trainer on one,
  engine on the other, overlapped generation), with only the bench's model, data, reward and batch
  as overrides. Its engine and trainer settings are the recipe's and the CUDA defaults.
- TRL: `GRPOTrainer(use_vllm=True, vllm_mode="colocate")` (vLLM with CUDA graphs inside the training
  process), micro batch 32 with accumulation to the same batch; on two GPUs two processes
  (`accelerate launch --num_processes 2`), each with its own colocated vLLM.

Reward (`id_share`): the share of completion tokens whose id is below half the vocabulary, read
from the text (`<unusedN>` spells id N; other characters are low ids): never flat on a random
model. Completion lengths: a random model at 151,936 ids almost never samples EOS, so both
systems stop at the string "<unused77" (1,111 of the ids start with it, p ~ 0.7% per token: mean
length ~120 of 256), as real completions vary in length.

Printed per model: s/step (mean over the steps after --warmup; rlp: time/step, TRL: wall between
optimiser-step ends), trained tokens/s (prompt + completion of every sample / s/step), generated
tokens/s (completion tokens / s/step), mean completion length (a row differing by more than 10%
voids the comparison), peak GPU memory per process (nvidia-smi), start-up seconds, the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import string
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from scaling import GpuMemoryMonitor  # noqa: E402

STOP = "<unused77"
LR = 1e-6
RECIPES = {1: "recipes/gpu/grpo_1gpu.yaml", 2: "recipes/gpu/grpo_2gpu.yaml"}
UNUSED = re.compile(r"<unused(\d+)>")


def id_share(prompts: list[str], completions: list[str], **_) -> list[float]:
    """Share of completion tokens with an id below half of Qwen2.5's vocabulary (0 if empty)."""
    scores = []
    for text in completions:
        ids = [int(n) for n in UNUSED.findall(text)]
        chars = len(UNUSED.sub("", text))  # character tokens: ids below 200
        total = len(ids) + chars
        scores.append((sum(i < common.QWEN_VOCAB // 2 for i in ids) + chars) / total if total else 0.0)
    return scores


def write_prompts(path: Path, rows: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(rows):
            f.write(json.dumps({"prompt": "".join(rng.choices(string.ascii_lowercase, k=16)), "ground_truth": ""}) + "\n")
    return path


# ---- rlp -------------------------------------------------------------------------------------
def rlp_command(args, gpus: int, model_dir: Path, data: Path, run_dir: Path) -> list[str]:
    """The CLI as a user runs it: the shipped recipe plus the bench's model, data, reward, batch."""
    overrides = {
        "model.path": str(model_dir), "data.train.path": str(data), "data.max_length": args.max_tokens + 64,
        "rollout.max_tokens": args.max_tokens, "rollout.max_model_len": args.max_tokens + 64,
        "rollout.stop": json.dumps([STOP]), "grpo.steps": args.steps, "grpo.prompts_per_step": args.prompts,
        "grpo.group_size": args.group, "grpo.drop_flat_groups": "false", "grpo.save_every": "null",
        "grpo.prompt_template": json.dumps("{prompt}"), "trainer.lr": LR, "trainer.min_lr": LR,
        "rewards.functions": json.dumps([{"name": f"{Path(__file__).resolve()}:id_share"}]),
        "tracking.tensorboard": "false",
    }
    return [sys.executable, "-m", "rl_pipeline.cli", "grpo", RECIPES[gpus], *(f"{k}={v}" for k, v in overrides.items()),
            "--run-dir", str(run_dir)]


def rlp_result(run_dir: Path, args, log: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step" in r]
    if len(rows) < args.steps:
        raise RuntimeError(f"rlp logged {len(rows)} of {args.steps} steps (log {log})")
    steady = rows[args.warmup:]
    step_s = mean(r["time/step"] for r in steady)
    completion = mean(r["rollout/response_length_mean"] for r in steady)
    phases = {p: mean(r.get(f"time/{p}", 0.0) for r in steady) for p in ("generate", "reward", "train", "sync",
                                                                          "rollout_wait", "other")}
    return {"step_s": step_s, "completion": completion, "phases": phases, "steps_s": sum(r["time/step"] for r in rows),
            "padding": mean(r.get("train/padding_share", float("nan")) for r in steady),
            "reward": [r.get("reward/total/mean", float("nan")) for r in rows]}


# ---- TRL -------------------------------------------------------------------------------------
def run_trl(args) -> None:
    """Child (one per process under accelerate): TRL's GRPOTrainer; rank 0 writes the result."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    started = time.perf_counter()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    stamps, logs = [], []

    class Record(TrainerCallback):
        def on_step_end(self, *_, **__):
            torch.cuda.synchronize()
            stamps.append(time.perf_counter())

        def on_log(self, _args, _state, _control, logs_=None, **kwargs):
            entry = logs_ or kwargs.get("logs")
            if entry:
                logs.append(dict(entry))

    data = load_dataset("json", data_files=args.data, split="train")
    micro = min(32, args.prompts * args.group // world)
    config = GRPOConfig(
        output_dir=str(Path(args.work) / "trl-run"), bf16=True, seed=0, report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, max_steps=args.steps, per_device_train_batch_size=micro,
        gradient_accumulation_steps=args.prompts * args.group // (micro * world), num_generations=args.group,
        max_completion_length=args.max_tokens, temperature=1.0, top_p=1.0, learning_rate=LR,
        lr_scheduler_type="constant", adam_beta1=0.9, adam_beta2=0.99, max_grad_norm=1.0, beta=0.0,
        loss_type="dapo", scale_rewards="group", num_iterations=1, generation_kwargs={"stop": [STOP]},
        use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.35, vllm_enable_sleep_mode=False,
        vllm_max_model_length=args.max_tokens + 64,
    )
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    t0 = time.perf_counter()
    trainer = GRPOTrainer(model=model, reward_funcs=[id_share], args=config, train_dataset=data,
                          processing_class=tokenizer, callbacks=[Record()])
    trainer.train()
    if int(os.environ.get("RANK", "0")) == 0:
        steady = slice(args.warmup, None)
        step_s = (stamps[-1] - stamps[args.warmup - 1]) / (len(stamps) - args.warmup)
        lengths = [e["completions/mean_length"] for e in logs if "completions/mean_length" in e]
        Path(args.result).write_text(json.dumps({
            "step_s": step_s, "completion": mean(lengths[steady]) if lengths[steady] else float("nan"),
            "reward": [e["reward"] for e in logs if "reward" in e],
            "steps_s": stamps[-1] - stamps[0] + step_s, "trainer_init_s": t0 - started,
        }))


def trl_command(args, gpus: int, model_dir: Path, data: Path, result: Path) -> list[str]:
    child = [__file__, "--system", "trl", "--model-dir", str(model_dir), "--data", str(data), "--result", str(result),
             *(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
               if k in ("steps", "warmup", "prompts", "group", "max_tokens", "work"))]
    if gpus == 1:
        return [sys.executable, *child]
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(gpus),
            "--main_process_port", str(free_port()), *child]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the parent ------------------------------------------------------------------------------
def run_system(system: str, args, gpus: int, model: str, model_dir: Path, data: Path) -> dict:
    """Run one system in its own process tree while sampling GPU memory; its result or an error."""
    work = Path(args.work)
    tag = f"{system}-{model}-{gpus}gpu"
    log, result, run_dir = work / f"log-{tag}.txt", work / f"result-{tag}.json", work / f"run-{tag}"
    shutil.rmtree(run_dir, ignore_errors=True)
    result.unlink(missing_ok=True)
    cmd = (rlp_command(args, gpus, model_dir, data, run_dir) if system == "rlp"
           else trl_command(args, gpus, model_dir, data, result))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(gpus)),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(common.REPO), os.environ.get("PYTHONPATH")]))}
    if system == "trl":
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        if gpus > 1:
            for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
                env.pop(key)
    started = time.perf_counter()
    with GpuMemoryMonitor() as memory, log.open("w") as out:
        code = subprocess.call(cmd, cwd=common.REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - started
    print(f"  {tag}: exit {code} in {wall:.0f} s (log {log})", flush=True)
    try:
        if code != 0:
            raise RuntimeError(f"exit {code}")
        out = rlp_result(run_dir, args, log) if system == "rlp" else json.loads(result.read_text())
    except Exception as err:  # a failed system is a row that says so, not a crash of the bench
        tail = [ln for ln in log.read_text().splitlines() if ln.strip()][-3:]
        return {"error": f"{err}: {' | '.join(tail)[:300]}"}
    # Start-up and tear-down: the process's wall time less its steps (the first step's count in full).
    return {**out, "overhead_s": wall - out["steps_s"], "memory": memory_summary(memory)}


def memory_summary(memory: GpuMemoryMonitor) -> str:
    """Peak GiB per rlp role (Ray actor process) and per GPU (TRL: one process per GPU)."""
    roles = [f"{role} {gib:.1f}" for role, gib in sorted(memory.per_role.items())]
    return ", ".join(roles + [f"GPU{i} {gib:.1f}" for i, gib in sorted(memory.per_gpu.items())])


def table(args, gpus: int, model: str, params: int, results: dict[str, dict]) -> None:
    batch = args.prompts * args.group
    print(f"\n## {model} ({params / 1e9:.2f}B, vocab {common.QWEN_VOCAB}), {gpus} GPU(s), {args.prompts} prompts x "
          f"G={args.group}, max {args.max_tokens} new tokens, means over steps {args.warmup + 1}-{args.steps}")
    print("| system | s/step | trained tok/s | generated tok/s | mean completion | start-up + exit s | peak GPU memory GiB |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for system, r in results.items():
        if "error" in r:
            print(f"| {system} | FAILED: {r['error']} |")
            continue
        trained = batch * (16 + r["completion"]) / r["step_s"]
        generated = batch * r["completion"] / r["step_s"]
        startup = f"{r['overhead_s']:.0f}"
        print(f"| {system} | {r['step_s']:.2f} | {trained:,.0f} | {generated:,.0f} | {r['completion']:.0f} | {startup} "
              f"| {r['memory']} |")
    rlp, trl = results.get("rlp", {}), results.get("trl", {})
    if "step_s" in rlp and "step_s" in trl:
        void = abs(rlp["completion"] - trl["completion"]) > 0.1 * trl["completion"]
        print(f"\nrlp / TRL step throughput: {trl['step_s'] / rlp['step_s']:.2f}x"
              f"{'  (VOID: mean completion lengths differ by more than 10%)' if void else ''} (target >= 1.5x)")
    if "phases" in rlp:
        ph = rlp["phases"]
        print("rlp phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in ph.items())
              + f"; padding share of trained tokens {rlp['padding']:.3f}")
    for system, r in results.items():
        if "reward" in r:
            print(f"{system} reward per step: " + " ".join(f"{x:.3f}" for x in r["reward"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="0.5b,1.5b")
    parser.add_argument("--gpus", type=int, default=1, choices=sorted(RECIPES))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the means")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--systems", default="rlp,trl")
    parser.add_argument("--work", default="/tmp/rlp-vs-trl")
    parser.add_argument("--system", help=argparse.SUPPRESS)  # internal: the TRL child
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    common.gpu_env()
    if args.system == "trl":
        run_trl(args)
        return
    if not 0 < args.warmup < args.steps:
        parser.error("--warmup must be between 1 and --steps - 1")
    common.header(f"rlp grpo vs TRL GRPOTrainer on {args.gpus} GPU(s)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = write_prompts(work / "prompts.jsonl", rows=args.prompts * (args.steps + 2))
    for model in args.models.split(","):
        model_dir, params = common.build_model(work, model, vocab_size=common.QWEN_VOCAB)
        results = {system: run_system(system, args, args.gpus, model, model_dir, data)
                   for system in args.systems.split(",")}
        table(args, args.gpus, model, params, results)


if __name__ == "__main__":
    main()

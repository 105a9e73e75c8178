"""The `rlp` command line: each subcommand parses its arguments and calls one pipeline.

User-facing output goes to stdout; a bad recipe, override or dataset is one line on stderr and
exit status 2, before any actor starts.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="rl_pipeline: SFT, GRPO and R1-style distillation on Ray, vLLM and DeepSpeed.",
)

OVERRIDES_HELP = "KEY=VALUE overrides of recipe keys, e.g. trainer.lr=1e-4 sft.max_steps=10"


def _fail(message: str) -> None:
    # One line, whatever the cause: YAML parser messages span several lines.
    typer.echo("error: " + " ".join(str(message).split()), err=True)
    raise typer.Exit(2)


def _load(recipe: Path, overrides: list[str]):
    from rl_pipeline.config import RecipeError, load_recipe

    try:
        return load_recipe(recipe, overrides)
    except RecipeError as exc:
        _fail(str(exc))


VERBOSE_HELP = ("debug logging, and the output of Ray, vLLM, DeepSpeed and the actors on the console "
                "(otherwise in the Ray session's log files)")


@app.callback()
def _setup_logging(verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP)) -> None:
    from rl_pipeline import console

    console.configure(verbose)


@app.command("config")
def config_cmd(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """Print the resolved recipe (defaults filled in, overrides applied) as YAML; for a pipeline
    recipe, every stage's resolved recipe and the report's."""
    from rl_pipeline.config import recipe_to_yaml

    if _is_pipeline_recipe(recipe):
        if overrides:
            _fail(f"{recipe}: a pipeline recipe takes no KEY=VALUE overrides; edit its stages' recipes")
        typer.echo(_pipeline_to_yaml(recipe), nl=False)
        return
    typer.echo(recipe_to_yaml(_load(recipe, overrides or [])), nl=False)


def _is_pipeline_recipe(recipe: Path) -> bool:
    import yaml

    try:
        raw = yaml.safe_load(recipe.read_text())
    except (OSError, yaml.YAMLError):
        return False  # the recipe loader reports it with the file and line
    return isinstance(raw, dict) and "stages" in raw


def _pipeline_to_yaml(recipe: Path) -> str:
    """The pipeline's resolved stages, each stage recipe with every default spelled out."""
    import yaml

    from rl_pipeline.config import RecipeError
    from rl_pipeline.pipelines.pipeline import load_plan

    try:
        plan = load_plan(recipe)
    except RecipeError as exc:
        _fail(str(exc))
    report = {k: (v.model_dump(mode="json") if k == "recipe" else v) for k, v in plan.report.items()}
    resolved = {
        "run_dir": str(plan.run_dir), "prepare": plan.prepare,
        "stages": [{"name": s.name, "kind": s.kind, "recipe": s.recipe.model_dump(mode="json")} for s in plan.stages],
        "report": report,
    }
    return yaml.safe_dump(resolved, sort_keys=False)


@app.command("tiny-model")
def tiny_model_cmd(
    out_dir: Path = typer.Argument(..., help="folder to write the model and tokenizer to"),
    layers: int = typer.Option(4, help="transformer layers"),
    hidden: int = typer.Option(128, help="hidden size"),
    heads: int = typer.Option(2, help="attention heads (hidden/heads must be 32, 64 or 128)"),
    kv_heads: int = typer.Option(2, help="key/value heads"),
    intermediate: int = typer.Option(384, help="MLP size"),
    max_positions: int = typer.Option(512, help="context length"),
    seed: int = typer.Option(0, help="initialisation seed"),
) -> None:
    """Build a small random Qwen2-architecture model with a char-level chat tokenizer."""
    from rl_pipeline.models.tiny import TinyModelSpec, build_tiny_model

    try:
        spec = TinyModelSpec(layers, hidden, heads, kv_heads, intermediate, max_positions, seed=seed)
    except ValueError as exc:
        _fail(str(exc))
    out = build_tiny_model(out_dir, spec)
    typer.echo(f"wrote tiny model to {out}")


@app.command("make-task")
def make_task_cmd(
    out_dir: Path = typer.Argument(..., help="folder for train/eval/test jsonl files"),
    train: int = typer.Option(9000, help="training problems"),
    eval_size: int = typer.Option(200, "--eval", help="validation problems"),
    test: int = typer.Option(200, help="held-out test problems"),
    digits: int = typer.Option(2, help="digits per operand"),
    ops: str = typer.Option("+", help="operations to draw from, e.g. '+-'"),
    seed: int = typer.Option(0, help="sampling seed"),
    pairs: bool = typer.Option(False, "--pairs", help="also write SPLIT_pairs.jsonl: reward-model pairs of the right "
                               "answer (chosen) vs a plausible mistake (rejected), for `rlp rm`"),
) -> None:
    """Write the synthetic arithmetic task (disjoint splits) as jsonl datasets."""
    from rl_pipeline.data.synthetic import write_preference_pairs, write_task

    try:
        paths = write_task(out_dir, {"train": train, "eval": eval_size, "test": test}, digits, ops, seed)
    except ValueError as exc:
        _fail(str(exc))
    if pairs:
        for name, path in list(paths.items()):
            paths[f"{name} pairs"] = write_preference_pairs(path, path.with_name(f"{name}_pairs.jsonl"), seed)
    for name, path in paths.items():
        typer.echo(f"{name}: {path}")


def _train(train_fn, recipe: Path, overrides: Optional[list[str]], run_dir: Optional[Path], resume: bool):
    """Load the recipe and run a training stage; bad input is one line and exit status 2."""
    from rl_pipeline.config import InputError

    recipe_obj = _load(recipe, overrides or [])
    try:
        return train_fn(recipe_obj, run_dir=run_dir, resume=resume)
    except InputError as exc:
        _fail(str(exc))


@app.command("sft")
def sft_cmd(
    recipe: Path = typer.Argument(..., help="recipe YAML with model, data, trainer and sft sections"),
    overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --run-dir from its checkpoint"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="run directory (default: output_dir/name-TIME)"),
) -> None:
    """Supervised fine-tuning on DeepSpeed trainer ranks (Ray actors)."""
    from rl_pipeline.pipelines.sft import train_sft

    result = _train(train_sft, recipe, overrides, run_dir, resume)
    typer.echo(f"final model: {result.final_model}")


@app.command("grpo")
def grpo_cmd(
    recipe: Path = typer.Argument(..., help="recipe YAML with model, data, trainer, rollout, rewards and grpo sections"),
    overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --run-dir from its checkpoint"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="run directory (default: output_dir/name-TIME)"),
) -> None:
    """GRPO: vLLM rollouts, reward service, DeepSpeed policy updates, weight sync each step.

    With a `teacher:` section, on-policy distillation: the teacher scores every sampled token, and its \
per-token reverse-KL advantage replaces (or is mixed with) the rewards, which may then be left out."""
    from rl_pipeline.pipelines.grpo import train_grpo

    result = _train(train_grpo, recipe, overrides, run_dir, resume)
    for key, value in result.final_eval.items():
        typer.echo(f"{key}: {value:.4f}")
    typer.echo(f"final model: {result.final_model}")


@app.command("rm")
def rm_cmd(
    recipe: Path = typer.Argument(..., help="recipe YAML with model, data (preference pairs), trainer and rm sections"),
    overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --run-dir from its checkpoint"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="run directory (default: output_dir/name-TIME)"),
) -> None:
    """Reward model: Bradley-Terry on (prompt, chosen, rejected) pairs, a scalar head on model.path
    (e.g. an SFT checkpoint); writes a sequence-classification model the reward_model reward loads."""
    from rl_pipeline.pipelines.rm import train_rm

    result = _train(train_rm, recipe, overrides, run_dir, resume)
    for key, value in result.final_eval.items():
        typer.echo(f"{key}: {value:.4f}")
    typer.echo(f"final model: {result.final_model}")


@app.command("eval")
def eval_cmd(
    recipe: Path = typer.Argument(..., help="recipe YAML with model, data.eval, rollout, rewards and grpo sections"),
    overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    output: Optional[Path] = typer.Option(None, "--output", help="results JSON (default: "
                                          "output_dir/eval/MODEL-TIME.json)"),
) -> None:
    """Held-out evaluation of model.path on data.eval: greedy accuracy (from the reward that grades
    correctness), pass@k, mean reward, response length; prints and writes what it scored."""
    from rl_pipeline.config import InputError
    from rl_pipeline.pipelines.evaluate import default_results_path, evaluate_model, write_results

    recipe_obj = _load(recipe, overrides or [])
    try:
        result = evaluate_model(recipe_obj)
    except InputError as exc:
        _fail(str(exc))
    typer.echo(f"model: {result.model}\ndata: {result.data} ({result.problems} problems)\naccuracy: {result.accuracy}")
    for key, value in result.metrics.items():
        typer.echo(f"{key}: {value:.4f}")
    path = write_results(result, output or default_results_path(recipe_obj, result.model))
    typer.echo(f"results: {path}")


@app.command("distill")
def distill_cmd(
    recipe: Path = typer.Argument(..., help="recipe YAML with data, rewards and distill sections (rollout optional)"),
    overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    output: Optional[Path] = typer.Option(None, "--output", help="dataset folder (default: distill.output)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="delete a previous output made by another recipe"),
) -> None:
    """R1-style distillation data: the expert answers each problem with and without the system
    prompt, rewards filter the answers, the kept ones become an SFT dataset. With distill.pairs:
    best vs worst answer by reward per problem, preference pairs for `rlp rm`. A re-run resumes."""
    from rl_pipeline.config import InputError
    from rl_pipeline.pipelines.distill import run_distill

    recipe_obj = _load(recipe, overrides or [])
    try:
        result = run_distill(recipe_obj, output=output, overwrite=overwrite)
    except InputError as exc:
        _fail(str(exc))
    stats = result.stats
    for kind, k in stats["kinds"].items():
        typer.echo(f"{kind}: kept {k['accepted']} of {k['generated']} samples "
                   f"(acceptance {k['acceptance_rate']:.3f}, {k['problems_with_accepted']} problems)")
    if result.empty_reason:
        typer.echo(f"empty dataset: {result.empty_reason}")
    elif result.low_acceptance:
        typer.echo(f"warning: {result.low_acceptance}", err=True)
    trainer = "rlp rm" if recipe_obj.distill.pairs else "rlp sft"
    typer.echo(f"dataset: {result.output} ({result.rows} rows; stats.json, README.md)")
    # RECIPE is any recipe of that command whose data.train.format is auto (the default): the
    # folder's columns tell the format, so the line needs no other key.
    typer.echo(f"next: {trainer} RECIPE data.train.path={result.output / 'data'}")


SEED_HELP = ("training seed of every stage and of the tiny model's initialisation (the task data stays the same); "
             "default: the recipe's seeds")


@app.command("pipeline")
def pipeline_cmd(
    recipe: Path = typer.Argument(..., help="pipeline recipe YAML (prepare, common, stages, report)"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="run directory (default: output_dir/name)"),
    seed: Optional[int] = typer.Option(None, "--seed", help=SEED_HELP),
) -> None:
    """Run the stages a pipeline recipe lists (distill, sft, grpo) in one run directory, then
    evaluate and write report.md + curves.png. Rerunning skips finished stages and resumes."""
    from rl_pipeline.config import InputError
    from rl_pipeline.pipelines.pipeline import run_pipeline

    try:
        out = run_pipeline(recipe, run_dir, seed)
    except InputError as exc:
        _fail(str(exc))
    typer.echo(f"report: {out / 'report.md'}")


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="run directory of the demo"),
    seed: Optional[int] = typer.Option(None, "--seed", help=SEED_HELP),
) -> None:
    """The whole story on this machine: base model, expert, distill, SFT, GRPO, report (CPU, no download)."""
    demo_recipe = Path(__file__).resolve().parent.parent / "recipes" / "demo.yaml"
    pipeline_cmd(demo_recipe, out, seed)


@app.command("view")
def view_cmd(
    run_dir: Path = typer.Argument(..., help="run directory of rlp grpo / sft / rm / pipeline / demo"),
    output: Optional[Path] = typer.Option(None, "--output", help="page to write (default: RUN_DIR/view.html)"),
    serve: bool = typer.Option(False, "--serve", help="keep the page up to date while the run goes and serve "
                               "RUN_DIR on http://127.0.0.1:PORT/view.html (Ctrl-C stops)"),
    port: int = typer.Option(8000, "--port", help="with --serve: the local port (0: any free one)"),
    every: float = typer.Option(10.0, "--every", help="with --serve: seconds between looks at the run's files"),
) -> None:
    """One self-contained HTML page of a run: the curves, the sampled completions by step (tokens
    coloured by the sampler/trainer logprob gap or the advantage), one prompt's answers across the
    run, the recipe and the report. Opens from a copied folder: no server, no network."""
    from rl_pipeline.view import serve as serve_page, write_page

    try:
        if serve:
            serve_page(run_dir, port=port, every_s=every)
        else:
            typer.echo(f"page: {write_page(run_dir, output)}")
    except FileNotFoundError as exc:
        _fail(str(exc))


def main() -> None:
    from rl_pipeline import interrupt

    interrupt.install()  # Ctrl-C: stop within seconds wherever the driver waits
    try:
        app()
    except KeyboardInterrupt:
        interrupt.finish()  # one line: the step reached and the command that resumes; exit 130
    except SystemExit:
        if interrupt.requested():  # typer turns a KeyboardInterrupt into a silent exit 130
            interrupt.finish()
        raise


if __name__ == "__main__":
    main()

"""`rlp view`: the page holds what the run logged, stays a few MB for a 1,000-step run, loads in a
real headless browser (Debian's chromium through Playwright) with no console errors, and
`--serve` rewrites it when the run moves on.

The runs here are written by the real writers (tracking.Tracker, pipelines/samples.group_rows
over real GRPOSample batches and the tiny model's tokenizer), without training: what the page
reads is what a GRPO run writes (test_grpo.py checks that a real run writes it)."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from rl_pipeline.batch import build_batch
from rl_pipeline.config import TrackingConfig
from rl_pipeline.pipelines.samples import as_markdown, attach_trainer_logprobs, group_rows, mark_shown, table_rows
from rl_pipeline.tracking import Tracker
from rl_pipeline.view import page as view_page
from rl_pipeline.workers.rollout import Completion

REPO = Path(__file__).resolve().parents[2]
HOSTILE = "</script><script>document.title='owned'</script><!-- & <b>bold</b>"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def write_run(run_dir: Path, tokenizer, steps: int, group_size: int = 4, length: int = 24, seed: int = 0) -> None:
    """A GRPO-shaped run: metrics every step, eval every 5, two logged groups per step whose
    completions carry trainer logprobs (so tokens and gaps), one held-out prompt per eval."""
    rng = random.Random(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text("grpo:\n  steps: %d\n" % steps)
    tracker = Tracker(run_dir, TrackingConfig(tensorboard=False))
    for step in range(1, steps + 1):
        groups = [[_completion(tokenizer, rng, length, step) for _ in range(group_size)] for _ in range(3)]
        rewards = [float(rng.random() < 0.5) for _ in range(3 * group_size)]
        prompts = [f"what is {b} + {step}?" for b in range(3)]
        shown = [{"prompt": prompts[i // group_size], "completion": c.text, "finish_reason": c.finish_reason,
                  "components": {"math": rewards[i]}} for i, c in enumerate(c for g in groups for c in g)]
        batch = build_batch([tokenizer.encode(p) for p in prompts], groups, rewards,
                            [r - 0.5 for r in rewards], shown=shown)
        mark_shown(batch, 2)
        attach_trainer_logprobs(batch, {s.report_as: [lp + rng.gauss(0, 0.01) for lp in s.sampler_logprobs]
                                        for s in batch.samples if s.report_as is not None})
        metrics = {"reward/total/mean": sum(rewards) / len(rewards), "time/generate": 1.0, "time/train": 0.5}
        if step % 5 == 0 or step == steps:
            metrics["eval/accuracy"] = step / steps
            rows = [{"kind": "eval", "prompt": "held-out: 7 * 6?", "completions": [
                {"text": f"answer {step} {HOSTILE}", "reward": 1.0, "length": 3, "finish_reason": "stop"}]}]
            tracker.log_samples(step, rows, as_markdown(rows), table_rows(step, rows))
        tracker.log(step, metrics)
        rows = group_rows(batch, 2, tokenizer)
        tracker.log_samples(step, rows, as_markdown(rows), table_rows(step, rows))
    tracker.close()


def _completion(tokenizer, rng: random.Random, length: int, step: int) -> Completion:
    text = "".join(rng.choice("0123456789 +=abc") for _ in range(length - 4)) + f" s{step}"
    ids = tokenizer.encode(text)
    return Completion(token_ids=ids, logprobs=[-rng.random() for _ in ids], text=text, finish_reason="stop",
                      truncated=False, policy_version=step - 1)


def embedded_data(page: Path) -> dict:
    html = page.read_text()
    start = html.index('<script id="run-data" type="application/json">') + len('<script id="run-data" type="application/json">')
    return json.loads(html[start: html.index("</script>", start)])


def test_the_page_holds_what_the_run_logged(tmp_path, tokenizer):
    write_run(tmp_path / "run", tokenizer, steps=6)
    page = view_page.write_page(tmp_path / "run")
    data = embedded_data(page)  # a completion holding "</script>" did not end the JSON block
    (stage,) = data["stages"]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert stage["curves"]["steps"] == [m["step"] for m in metrics] == list(range(1, 7))
    assert stage["curves"]["series"]["reward/total/mean"] == [float(f"{m['reward/total/mean']:.5g}") for m in metrics]
    assert stage["curves"]["series"]["eval/accuracy"] == [None, None, None, None, 0.83333, 1.0]
    logged = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert stage["samples"] == logged and stage["samples_left_out"] == 0
    assert stage["recipe"] == "grpo:\n  steps: 6\n"
    held_out = [r for r in stage["samples"] if r["kind"] == "eval"]
    assert held_out[0]["completions"][0]["text"].endswith(HOSTILE)
    trained = stage["samples"][1]["completions"][0]
    assert len(trained["tokens"]) == len(trained["token_gap"]) == trained["length"]


def test_a_thousand_step_run_makes_a_page_of_a_few_mb(tmp_path, tokenizer):
    write_run(tmp_path / "run", tokenizer, steps=1000, group_size=8, length=120)
    logged = (tmp_path / "run" / "samples.jsonl").stat().st_size
    page = view_page.write_page(tmp_path / "run")
    data = embedded_data(page)
    (stage,) = data["stages"]
    assert logged > 20_000_000 and page.stat().st_size < 4_000_000, (logged, page.stat().st_size)
    assert len(stage["curves"]["steps"]) == 1000  # every step's curves
    steps = sorted({r["step"] for r in stage["samples"] if r["kind"] == "train"})
    assert steps[0] == 1 and steps[-1] == 1000 and stage["samples_left_out"] == 1000 - len(steps) > 0
    # every evaluation's held-out answer stays: the prompt can be followed through the whole run
    assert [r["step"] for r in stage["samples"] if r["kind"] == "eval"] == list(range(5, 1001, 5))
    last = [r for r in stage["samples"] if r["step"] == 1000 and r["kind"] == "train"]
    assert last and "tokens" in last[0]["completions"][0]  # the last step keeps its per-token detail


def _browser_or_skip():
    sys.path.insert(0, str(REPO / "scripts"))
    from view_screenshot import find_browser

    if find_browser() is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs chromium (.ci/run): the page's browser test must run there")
        pytest.skip("no chromium here: apt-get install chromium")


def test_the_page_loads_in_a_headless_browser_without_errors_and_draws(tmp_path, tokenizer):
    _browser_or_skip()
    write_run(tmp_path / "run", tokenizer, steps=12)
    page = view_page.write_page(tmp_path / "run")
    shot = tmp_path / "view.png"
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "view_screenshot.py"), str(page), str(shot)],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout)
    assert seen["errors"] == [] and seen["title"].startswith("run ")  # the hostile completion ran nothing
    assert seen["steps"] == list(range(1, 13)) and seen["shown_steps"] == [12, 11, 12]  # last step first; prev; next
    assert seen["groups_shown"] == 3  # step 12: two trained groups and the held-out prompt
    assert seen["coloured_tokens"] > 2 * 4 * 10
    assert seen["curves"] >= 2 and all(n > 500 for n in seen["painted_pixels"]), seen["painted_pixels"]
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    not_background = sum(n for n, c in colours if c != (246, 247, 249) and c != (255, 255, 255))
    assert len(colours) > 50 and not_background > 0.05 * image.width * image.height


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_rewrites_the_page_when_the_run_moves_on(tmp_path, tokenizer):
    run = tmp_path / "run"
    write_run(run, tokenizer, steps=2)
    port, stop = _free_port(), threading.Event()
    thread = threading.Thread(target=view_page.serve, args=(run,), kwargs={"port": port, "every_s": 0.1, "stop": stop})
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}/view.html"
        first = _wait_for(lambda: _get(url), lambda html: "run-data" in html)
        with (run / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"step": 3, "reward/total/mean": 0.75}) + "\n")
        second = _wait_for(lambda: _get(url), lambda html: embedded_steps(html) == [1, 2, 3])
        assert embedded_steps(first) == [1, 2]
        assert json.loads(second.split('"serve":')[1].split("}")[0] + "}")["stamp"] == _get(
            f"http://127.0.0.1:{port}/view.stamp")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def embedded_steps(html: str) -> list[int]:
    start = html.index('"curves":{"steps":') + len('"curves":{"steps":')
    return json.loads(html[start: html.index("]", start) + 1])


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None


def _wait_for(fetch, ok, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fetch()
        if value is not None and ok(value):
            return value
        time.sleep(0.1)
    raise AssertionError(f"not seen within {timeout_s} s")

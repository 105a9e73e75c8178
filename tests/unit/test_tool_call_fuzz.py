"""Issue 27, class 6: nothing a policy writes inside <tool_call> tags raises out of a rollout turn.

Every test drives the path a rollout turn takes after the engine call
(`MultiTurnRollout._advance`: parse the calls, run them, render the tool turn's ids with the
real tiny chat template), or the parser alone, with hostile text: hand-written attacks first
(each raised out of `generate` before the fix), then thousands of random and adversarial
strings from `hypothesis`. A call that cannot run is an `error: ...` tool turn counted in
`tool/invalid`; a call that can run is answered; the trajectory stays picklable and
JSON-serialisable (the driver sends it to the reward workers)."""

from __future__ import annotations

import json
import pickle
import re

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rl_pipeline.config import ToolsConfig
from rl_pipeline.tools.calls import parse_tool_calls
from rl_pipeline.workers.multiturn import MultiTurnRollout, Trajectory, _Live, trajectory_metrics
from rl_pipeline.workers.rollout import Completion

ECHO_TOOL = '''
def echo(text: str) -> str:
    """Say the text back (a user tool whose output is whatever the policy wrote)."""
    return text


def lone() -> str:
    """A str no tokenizer takes: an unpaired surrogate."""
    return "a" + chr(0xD800)
'''
OPEN, CLOSE = "<tool_call>", "</tool_call>"
_ORACLE = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)  # the calls a turn holds
FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def sampler(tmp_path_factory):
    from rl_pipeline.models.tiny import build_tokenizer

    path = tmp_path_factory.mktemp("fuzz_tools") / "echo.py"
    path.write_text(ECHO_TOOL)
    cfg = ToolsConfig(functions=[{"name": "calculator"}, {"name": f"{path}:echo"}, {"name": f"{path}:lone"}], max_turns=4,
                      max_total_tokens=10**7, timeout_s=5.0, max_concurrency=4)
    rollout = MultiTurnRollout(None, build_tokenizer(), cfg)  # no engine: the turn's text is given
    yield rollout
    rollout.shutdown()


def advance(sampler: MultiTurnRollout, text: str) -> Trajectory:
    """One assistant turn that ends at a tool call, through the rollout's own per-turn code. The
    turn's ids play no part here (its text is what is parsed): a few stand in, which keeps
    thousands of examples fast (tokenizing 40 KB of brackets costs ~15 ms)."""
    ids = [1] * 8
    state = _Live([0], Trajectory([], [], "", "stop", False))
    sampler._advance([state], [Completion(ids, [0.0] * len(ids), text, "stop", False)], last_turn=False)
    return state.traj


def check_turn(sampler: MultiTurnRollout, text: str) -> Trajectory:
    """The properties every turn keeps, however hostile its text."""
    traj = advance(sampler, text)
    bodies = _ORACLE.findall(text)
    assert len(traj.tool_calls) == max(len(bodies), 1), "one answered call per <tool_call>...</tool_call>"
    for body, call in zip(bodies, traj.tool_calls):
        assert isinstance(call["output"], str)
        if call["status"] != "ok":
            assert call["output"].startswith("error: ")
        if not _is_call_object(body):
            assert call["status"] == "invalid", (body[:200], call["output"][:200])
    metrics = trajectory_metrics([traj], 0.0)
    assert metrics["tool/invalid"] == sum(c["status"] == "invalid" for c in traj.tool_calls)
    # The tool turn was appended (masked), and the driver can ship the trajectory to the rewards.
    assert traj.loss_mask.count(0) > 0 and not traj.truncated
    pickle.dumps(traj.for_reward())
    json.dumps(traj.for_reward())
    return traj


def _is_call_object(body: str) -> bool:
    try:
        payload = json.loads(body)
    except Exception:  # noqa: BLE001 - the oracle: whatever the standard parser refuses is not a call
        return False
    return isinstance(payload, dict) and isinstance(payload.get("name"), str)


def call(name: str, arguments: str) -> str:
    return f'{OPEN}{{"name": "{name}", "arguments": {arguments}}}{CLOSE}'


# ---- the attacks, one by one (each raised out of the rollout turn before the fix) -------------

def test_a_call_nested_a_hundred_thousand_deep_is_an_error_turn(sampler):
    traj = check_turn(sampler, "thinking" + call("calculator", "[" * 100_000 + "]" * 100_000))
    assert traj.tool_calls[0]["status"] == "invalid"
    assert "nest" in traj.tool_calls[0]["output"]


def test_a_call_nested_just_under_the_parsers_limit_cannot_break_the_reward_hand_off(sampler):
    # 600 levels parse, but a trajectory holding them no longer pickles on its way to the rewards.
    traj = check_turn(sampler, call("echo", '{"text": "x", "pad": ' + "[" * 600 + "]" * 600 + "}"))
    assert traj.tool_calls[0]["status"] == "invalid" and "nest" in traj.tool_calls[0]["output"]


def test_an_integer_over_4300_digits_is_an_error_turn(sampler):
    traj = check_turn(sampler, call("echo", '{"text": ' + "9" * 5000 + "}"))
    assert traj.tool_calls[0]["status"] == "invalid"
    assert "digits" in traj.tool_calls[0]["output"]


def test_an_unpaired_surrogate_echoed_back_does_not_break_the_tool_turn(sampler):
    # JSON may spell a lone surrogate; the tokenizer refuses such a str when it renders the turn.
    traj = check_turn(sampler, call("echo", '{"text": "a\\ud800b"}'))
    assert traj.tool_calls[0]["status"] == "invalid" and "surrogate" in traj.tool_calls[0]["output"]
    traj = check_turn(sampler, call("calculator", '{"expression": "\\udfff"}'))
    assert traj.tool_calls[0]["status"] == "invalid"
    # A tool may return one itself: the policy reads it replaced, the turn goes on.
    traj = check_turn(sampler, call("lone", "{}"))
    assert (traj.tool_calls[0]["status"], traj.tool_calls[0]["output"]) == ("ok", "a?")


@pytest.mark.timeout(10)  # a hang guard: the lazy regex took 40 s here (it rescans the rest per opener)
def test_many_unclosed_openers_are_parsed_in_linear_time():
    # A turn of 20,000 openers and no closer holds no call.
    assert parse_tool_calls(OPEN * 20_000 + '{"name": "calculator"}') == []
    text = OPEN + OPEN + '{"name": "echo", "arguments": {"text": "a"}}' + CLOSE + CLOSE + OPEN
    assert [(c.name, c.error is not None) for c in parse_tool_calls(text)] == [("", True)]


def test_good_calls_still_run_beside_bad_ones(sampler):
    traj = check_turn(sampler, call("calculator", '{"expression": "6*7"}') + call("echo", "[" * 5000)
                      + call("echo", '{"text": "hi"}'))
    assert [(c["status"], c["output"]) for c in traj.tool_calls][::2] == [("ok", "42"), ("ok", "hi")]
    assert trajectory_metrics([traj], 0.0)["tool/invalid"] == 1.0


# ---- thousands of random and adversarial strings -------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
hostile_fragments = st.one_of(
    st.integers(1, 3000).map(lambda d: "[" * d + "]" * d),  # past the decoder's ~1000-level recursion limit
    st.integers(1, 3000).map(lambda d: '{"a":' * d + "1" + "}" * d),
    st.integers(1, 3000).map(lambda d: "[" * d),  # unclosed
    st.integers(4000, 6000).map(lambda n: "-" * (n % 2) + "7" * n),  # around Python's 4300-digit limit
    st.sampled_from(["NaN", "-Infinity", "1e999999", "-0.0", "1" * 400 + "e-99999", '"\\ud800"', '"\\udfff\\ud800"',
                     '"\\u0000"', '"\\uffff"', "\x00", '"' + "\\" * 31 + '"', "tru", "nul", "{}", "[]", '""']),
    st.text(max_size=40),
)
tool_names = st.sampled_from(["calculator", "echo", "lone", "python", "", "nope", "\ud800", "calculator\x00"])
names = st.one_of(tool_names, tool_names, tool_names, st.text(max_size=10))  # mostly names that could run
expressions = st.sampled_from(["6*7", "(7**5100)**10000", "10**10**10", "2**-10000", "(-8)**0.5", "1/0",
                               "-" * 900 + "1", "(" * 300 + "1" + ")" * 300, "1e308*10", "9" * 999])


@st.composite
def hostile_calls(draw) -> str:
    """A call shaped like the real thing with a hostile part spliced in, or cut short."""
    name = json.dumps(draw(names), ensure_ascii=draw(st.booleans()))
    kind = draw(st.integers(0, 4))
    if kind == 0:
        arguments = draw(hostile_fragments)
    elif kind == 1:
        arguments = '{"text": ' + draw(hostile_fragments) + "}"
    elif kind == 4:  # a well-formed string: control characters, astral planes, escaped or not
        arguments = '{"text": ' + json.dumps(draw(st.text(max_size=50)), ensure_ascii=draw(st.booleans())) + "}"
        name = name if draw(st.integers(0, 3)) == 0 else '"echo"'
    elif kind == 2:  # mostly a call the calculator runs
        arguments = json.dumps({"expression": draw(expressions)})
        name = name if draw(st.integers(0, 3)) == 0 else '"calculator"'
    else:
        arguments = json.dumps(draw(json_values))
    body = '{"name": ' + name + ', "arguments": ' + arguments + "}"
    if draw(st.integers(0, 3)) == 0:  # cut or spliced somewhere
        cut = draw(st.integers(0, len(body)))
        body = body[:cut] + draw(st.text(max_size=5)) + body[cut + draw(st.integers(0, 3)):]
    return body


raw_bytes = st.binary(max_size=200).map(lambda b: b.decode("utf-8", "replace"))
# Mostly call-shaped bodies (one_of would pick each kind equally often).
bodies = st.sampled_from([hostile_calls()] * 3 + [raw_bytes, st.text(max_size=200), hostile_fragments]).flatmap(
    lambda strategy: strategy)
turns = st.builds(
    lambda pre, parts, tail: pre + "".join(OPEN + b + CLOSE for b in parts) + tail,
    st.text(max_size=20),
    st.lists(bodies, min_size=1, max_size=3),
    st.sampled_from(["", OPEN, CLOSE, OPEN + CLOSE]),
).map(lambda t: t if t.endswith(CLOSE) else t + CLOSE)  # the turn stopped at the stop string


@FUZZ
@given(turns)
def test_no_turn_text_raises_out_of_the_rollout(sampler, text):
    traj = check_turn(sampler, text)
    for result in traj.tool_calls:  # --hypothesis-show-statistics: how many calls ran
        event(result["status"] if result["status"] != "invalid" else "invalid: " + result["output"][7:30])


@FUZZ
@given(st.one_of(raw_bytes, st.text(), bodies.map(lambda b: OPEN + b + CLOSE)))
def test_the_parser_answers_every_string(text):
    calls = parse_tool_calls(text)
    assert len(calls) == len(_ORACLE.findall(text))
    for parsed in calls:
        if parsed.error is None:  # a call that may run holds a name and plain, encodable JSON
            assert isinstance(parsed.name, str)
            json.dumps([parsed.name, parsed.arguments]).encode()

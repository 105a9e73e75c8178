"""The tools package without Ray: registry and schemas, the calculator, the python tool's sandbox,
call parsing, the concurrent runner's timeouts and errors, the tool turn's token ids, and the
loss mask through the GRPO batch."""

from __future__ import annotations

import pytest

from rl_pipeline import tools
from rl_pipeline.batch import GRPOSample, build_batch, collate_grpo
from rl_pipeline.tools.builtin import CalculatorError, calculator
from rl_pipeline.tools.calls import ToolCall, ToolRunner, parse_tool_calls
from rl_pipeline.workers.multiturn import Trajectory, TurnRenderer

USER_TOOL = '''
def lookup(key: str, default: str = "", *, table: dict | None = None) -> str:
    """Look a key up in the table.

    More words that are not the description."""
    return (table or {}).get(key, default)
'''


def test_registry_resolves_builtins_paths_and_files(tmp_path):
    (tmp_path / "mytools.py").write_text(USER_TOOL)
    assert {"calculator", "python"} <= set(tools.registered())
    assert tools.resolve("calculator") is calculator
    assert tools.resolve("rl_pipeline.tools.builtin:calculator") is calculator
    fn = tools.resolve(f"{tmp_path / 'mytools.py'}:lookup")
    assert fn("a", table={"a": "1"}) == "1"
    with pytest.raises(tools.ToolError, match="unknown tool 'nope'; registered tools are: calculator, python"):
        tools.resolve("nope")


def test_schema_comes_from_the_signature_and_hides_keyword_only_configuration(tmp_path):
    (tmp_path / "mytools.py").write_text(USER_TOOL)
    loaded = tools.load([(f"{tmp_path / 'mytools.py'}:lookup", {"table": {"k": "v"}})])
    schema = loaded["lookup"].schema
    assert schema == {"type": "function", "function": {
        "name": "lookup", "description": "Look a key up in the table.",
        "parameters": {"type": "object", "properties": {"key": {"type": "string"}, "default": {"type": "string"}},
                       "required": ["key"]}}}
    assert loaded["lookup"]({"key": "k"}) == "v"
    # The model may not set the recipe's keyword-only configuration, nor pass a wrong type.
    assert "unknown arguments ['table']" in tools.check_arguments(schema, {"key": "k", "table": {}})
    assert "must be of type string" in tools.check_arguments(schema, {"key": 3})
    assert tools.check_arguments(schema, {"key": "k"}) is None


def test_load_names_the_entry_of_a_bad_tool():
    with pytest.raises(tools.ToolError, match=r"tools.functions\[1\] \('nope'\): unknown tool"):
        tools.load([("calculator", {}), ("nope", {})])
    with pytest.raises(tools.ToolError, match=r"tools.functions\[0\] \('calculator'\): unknown keyword argument"):
        tools.load([("calculator", {"precision": 3})])
    with pytest.raises(tools.ToolError, match="already listed"):
        tools.load([("calculator", {}), ("rl_pipeline.tools.builtin:calculator", {})])


def test_calculator_is_exact_and_evaluates_nothing_but_arithmetic(tmp_path):
    assert calculator("123*456") == "56088"  # 123*456 = 56088
    assert calculator("(2+3)**2 - 7//2") == "22"  # 25 - 3
    assert calculator("6/3") == "2" and calculator("7/2") == "3.5" and calculator("-4 % 3") == "2"
    assert calculator("987654321*123456789") == "121932631112635269"  # exact, no float rounding
    marker = tmp_path / "pwned"
    for attack in (f"__import__('os').system('touch {marker}')", "(1).__class__", "[1, 2]", "x + 1", "'a' * 3"):
        with pytest.raises(CalculatorError):
            calculator(attack)
    assert not marker.exists()
    with pytest.raises(CalculatorError, match="exponent"):
        calculator("10**10**10")  # would hang an eval-based calculator
    with pytest.raises(CalculatorError, match="division by zero"):
        calculator("1/0")


def test_python_tool_runs_in_the_code_rewards_sandbox(monkeypatch):
    monkeypatch.setenv("RLP_TOOL_TEST_SECRET", "leaked")
    python = tools.load([("python", {"timeout_s": 5})])["python"]
    assert python({"code": "print(sum(range(10)))"}) == "45\n"
    # The sandbox scrubs the caller's environment: the program cannot read the driver's secrets.
    assert python({"code": "import os; print(os.environ.get('RLP_TOOL_TEST_SECRET'))"}) == "None\n"
    assert python({"code": "raise SystemExit(3)"}).startswith("error: exit code 3")


def test_parse_tool_calls_reads_qwen_markup():
    text = ('I will compute.<tool_call>{"name": "calculator", "arguments": {"expression": "1+2"}}</tool_call>'
            '<tool_call>{"name": "python", "arguments": {"code": "print(1)"}}</tool_call>')
    calls = parse_tool_calls(text)
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("calculator", {"expression": "1+2"}, None), ("python", {"code": "print(1)"}, None)]
    bad = parse_tool_calls('<tool_call>{"name": "calculator", "arguments": </tool_call>')
    assert bad[0].error.startswith("the tool call is not valid JSON")
    assert parse_tool_calls("no call here") == []


USER_RUNTIME_TOOLS = '''
import time

def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return f"slept {seconds}"

def broken() -> str:
    raise RuntimeError("disk on fire")
'''


def _runner(tmp_path, timeout_s: float = 0.3) -> ToolRunner:
    """The calculator (inline) beside two user tools (worker processes) from a file."""
    (tmp_path / "runtime_tools.py").write_text(USER_RUNTIME_TOOLS)
    loaded = tools.load([("calculator", {}), (f"{tmp_path}/runtime_tools.py:sleepy", {}),
                         (f"{tmp_path}/runtime_tools.py:broken", {})])
    return ToolRunner(loaded, timeout_s=timeout_s, max_concurrency=4)


def test_runner_times_out_counts_and_answers_every_failure_as_a_message(tmp_path):
    runner = _runner(tmp_path, timeout_s=0.3)
    try:
        calls = [ToolCall("sleepy", {"seconds": 30.0}), ToolCall("calculator", {"expression": "2*21"}),
                 ToolCall("broken", {}), ToolCall("nope", {}), ToolCall("calculator", {"expr": "1"}),
                 ToolCall("", None, "the tool call is not valid JSON")]
        results = runner.run(calls)
        assert [r.status for r in results] == ["timeout", "ok", "error", "invalid", "invalid", "invalid"]
        assert results[0].output == "error: timeout: tool 'sleepy' ran past its 0.3 s limit and was stopped"
        assert results[1].output == "42"
        assert results[2].output == "error: RuntimeError: disk on fire"
        assert results[3].output.startswith("error: unknown tool 'nope'; tools are: broken, calculator, sleepy")
        assert "missing arguments ['expression']" in results[4].output
        # The stuck worker was killed: the next turn's calls still run, on fresh workers.
        assert [r.output for r in runner.run([ToolCall("sleepy", {"seconds": 0.0})] * 4)] == ["slept 0.0"] * 4
    finally:
        runner.close()


def test_runner_limits_run_time_not_queue_time(tmp_path):
    # 8 calls of 0.2 s on 4 threads: the second four wait ~0.2 s for a thread, then run 0.2 s.
    # Their 0.3 s limit counts from their start (a ready worker), so none times out.
    runner = _runner(tmp_path, timeout_s=0.3)
    try:
        results = runner.run([ToolCall("sleepy", {"seconds": 0.2})] * 8)
        assert [r.status for r in results] == ["ok"] * 8
    finally:
        runner.close()


def test_tool_turn_ids_come_from_the_chat_template(tiny_tokenizer):
    renderer = TurnRenderer(tiny_tokenizer)
    ids = renderer.suffix_ids([{"role": "tool", "content": "408"}], ended_with_eos=False)
    assert tiny_tokenizer.convert_ids_to_tokens(ids) == [
        "<|end|>", "<|tool|>", "<tool_response>", "4", "0", "8", "</tool_response>", "<|end|>", "<|assistant|>"]
    # After a turn that sampled EOS itself, the template's turn end is not appended again.
    after_eos = renderer.suffix_ids([{"role": "user", "content": "again"}], ended_with_eos=True)
    assert tiny_tokenizer.convert_ids_to_tokens(after_eos)[:2] == ["<|user|>", "a"]


def test_tiny_template_writes_tool_calls_like_qwen(tiny_tokenizer):
    messages = [{"role": "user", "content": "12*34="},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "12*34"}}}]},
                {"role": "tool", "content": "408"}, {"role": "assistant", "content": "408"}]
    text = tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == ('<|user|>12*34=<|end|><|assistant|><tool_call>{"name": "calculator", "arguments": '
                    '{"expression": "12*34"}}</tool_call><|end|><|tool|><tool_response>408</tool_response><|end|>'
                    '<|assistant|>408<|end|>')
    for marker in ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<|tool|>"):
        assert len(tiny_tokenizer(marker, add_special_tokens=False)["input_ids"]) == 1


def test_loss_mask_keeps_tool_result_ids_out_of_the_loss_and_the_normaliser():
    # Two trajectories of one group (rewards 1 and 0): 3 sampled, 2 tool-result, 1 sampled ids.
    mask = [1, 1, 1, 0, 0, 1]
    trajs = [Trajectory([5, 6, 7, 8, 9, 10], [-0.1, -0.2, -0.3, 0.0, 0.0, -0.4], "x", "stop", False, loss_mask=mask)
             for _ in range(2)]
    batch = build_batch([[1, 2]], [trajs], [1.0, 0.0], advantages=[1.0, -1.0])
    assert batch.normaliser().tokens == 8.0  # 4 sampled ids per trajectory, tool ids not counted
    tensors = collate_grpo([s.as_row() for s in batch.samples], pad_id=0, device="cpu")
    # prompt_len 2: completion id j sits at label position 1 + j; positions 1..6 of 7.
    assert tensors["mask"][0].tolist() == [False, True, True, True, False, False, True]
    plain = GRPOSample([1, 2], [5, 6], [-0.1, -0.2], 1.0, 1.0, 0, False)
    assert plain.trained_tokens() == 2 and collate_grpo([plain.as_row()], 0, "cpu")["mask"][0].tolist() == [
        False, True, True]


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from rl_pipeline.models.tiny import build_tokenizer

    return build_tokenizer()



def test_tools_section_is_checked_when_the_recipe_loads():
    from rl_pipeline.config import RecipeError, parse_recipe

    base = {"model": {"path": "m"}}
    with pytest.raises(RecipeError, match="tools: give functions, an environment, or both"):
        parse_recipe({**base, "tools": {"max_turns": 2}})
    with pytest.raises(RecipeError, match="tools.max_turns"):
        parse_recipe({**base, "tools": {"functions": [{"name": "calculator"}], "max_turns": 0}})
    recipe = parse_recipe({**base, "tools": {"functions": [{"name": "calculator"}]}})
    assert recipe.tools.stop == ["</tool_call>"] and recipe.tools.max_turns == 4

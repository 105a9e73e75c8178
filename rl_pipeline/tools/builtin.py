"""The built-in tools: `calculator` (exact arithmetic, no eval) and `python` (a program run in
the same sandbox as the `code` reward, with its isolation and limits).

Both are registered inline (they run on a driver thread, no worker process), so each bounds its
own cost: the calculator refuses an operation whose result would be too large *before* it
computes it (one big-int power holds the GIL, so no timeout could stop it), and the python
tool's sandbox kills its program at its own wall limit.
"""

from __future__ import annotations

import ast
import math
import operator

from rl_pipeline.tools import register

# Bounds that keep one expression cheap: 10**10**10 would otherwise hang the caller.
MAX_EXPONENT = 10_000
MAX_DIGITS = 4_300  # Python's own int-to-str limit
MAX_BITS = int(MAX_DIGITS * math.log2(10))  # an int of at most this many bits prints in MAX_DIGITS
MAX_EXPRESSION_CHARS = 1_000

_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalculatorError(ValueError):
    """An expression the calculator does not evaluate (names, calls, huge powers, bad syntax)."""


@register("calculator", inline=True)
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression: numbers, + - * / // % ** and parentheses.

    Only those operators on int and float literals are evaluated (the expression's syntax tree
    is walked; nothing is passed to eval). Integer results are exact; a whole float prints
    without ".0" so "6/3" reads "2".
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
        value = _evaluate(tree.body)
    except SyntaxError as exc:
        raise CalculatorError(f"not an arithmetic expression: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # NUL bytes, surrogates; "-" * 999 + "1"
        if isinstance(exc, CalculatorError):
            raise
        raise CalculatorError(f"not an arithmetic expression ({type(exc).__name__})") from None
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        value = int(value)
    return str(value)


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        _check_size(node.op, left, right)
        try:
            result = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:  # an int too large for a float, or a float result out of range
            raise CalculatorError("the result is out of the float range") from None
        if isinstance(result, complex):  # (-8) ** 0.5
            raise CalculatorError("the result is not a real number")
        if isinstance(result, int) and result.bit_length() > MAX_BITS:
            raise CalculatorError(f"the result has more than {MAX_DIGITS} digits")
        return result
    raise CalculatorError(f"{type(node).__name__} is not allowed: only numbers and + - * / // % ** ( )")


def _check_size(op: ast.operator, left: int | float, right: int | float) -> None:
    """Refuse, before computing it, an int result past MAX_BITS: the operands are at most
    MAX_BITS each, so only ** and * can grow past it, and a product or power has at least
    this many bits. (+ - // % and floats stay cheap on such operands.)"""
    if isinstance(op, ast.Pow) and abs(right) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {right} is larger than {MAX_EXPONENT}")
    if not (isinstance(left, int) and isinstance(right, int)):
        return
    bits = abs(left).bit_length()
    if isinstance(op, ast.Pow) and right > 0 and bits > 1:
        least = (bits - 1) * right + 1
    elif isinstance(op, ast.Mult) and bits and right:
        least = bits + abs(right).bit_length() - 1
    else:
        return
    if least > MAX_BITS:
        raise CalculatorError(f"the result would have more than {MAX_DIGITS} digits")


@register("python", inline=True)
def python(code: str, *, timeout_s: float = 5.0) -> str:
    """Run a Python program (standard library only) and return what it printed.

    The program runs in `rewards.sandbox` (no network, a private temporary directory, CPU,
    memory and process limits), exactly as the `code` reward runs candidate programs. A program
    that fails returns its exit code and the end of its stderr. `timeout_s` is keyword-only:
    the recipe sets it (tools.functions[].kwargs), the model cannot.
    """
    return run_in_sandbox(code, timeout_s)


def run_in_sandbox(code: str, timeout_s: float) -> str:
    """The one place that calls the sandbox: its public `run_python` entry point, so a rewrite of
    its internals leaves tools alone. Keep this adapter small."""
    from rewards.sandbox import SandboxLimits, run_python

    result = run_python(code, limits=SandboxLimits(wall_s=timeout_s, cpu_s=max(1, int(timeout_s))))
    if result.timed_out:
        return f"error: the program ran past {timeout_s:g} s and was stopped"
    if result.returncode != 0:
        return f"error: exit code {result.returncode}\n{result.stderr[-1000:]}".rstrip()
    return result.stdout

"""Plain values across the sandbox boundary, as tagged JSON; stdlib only.

This file is imported by the trusted side (``rewards.code_asserts``) and also copied, as
source, into the sandboxes that evaluate test expressions: one codec on both sides.

``encode`` runs inside a sandbox next to the program, so it checks exact types
(``type(v) is int``, never ``isinstance``): a subclass of a plain type, or any object of the
program's own, is not encodable and the test that needed it fails. Its output is still only a
claim: the program controls that interpreter and may write anything. ``decode`` is what makes
that harmless: it builds plain values (None, bool, int, float, complex, str, bytes, list,
tuple, set, frozenset, dict, range) from the claim or raises ``ValueError``; nothing it returns
can run code of the program's when it is compared.
"""

from __future__ import annotations

MAX_DEPTH = 64
MAX_ITEMS = 1_000_000  # an iterator is read to this many items at most
RAISED = "raised"


def encode(value, depth: int = 0):
    """JSON-ready tagged form of a plain value; TypeError for anything else."""
    if depth > MAX_DEPTH:
        raise TypeError("value nested too deep")
    kind = type(value)
    if value is None:
        return ["none"]
    if kind is bool:
        return ["bool", value]
    if kind is int:
        return ["int", str(value)]
    if kind is float:
        return ["float", value.hex()]
    if kind is complex:
        return ["complex", value.real.hex(), value.imag.hex()]
    if kind is str:
        return ["str", value]
    if kind is bytes:
        return ["bytes", value.decode("latin-1")]
    if kind is range:
        return ["range", value.start, value.stop, value.step]
    if kind in (list, tuple, set, frozenset):
        return [kind.__name__, [encode(item, depth + 1) for item in value]]
    if kind is dict:
        return ["dict", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]]
    name = kind.__name__
    if name in ("dict_keys", "dict_items"):
        return ["set", [encode(item, depth + 1) for item in value]]
    if name in ("generator", "map", "filter", "zip", "enumerate", "reversed", "dict_values") or name.endswith("iterator"):
        items = []
        for item in value:
            if len(items) >= MAX_ITEMS:
                raise TypeError("iterator too long")
            items.append(encode(item, depth + 1))
        return ["list", items]
    raise TypeError(f"a {name} is not a plain value")


def decode(obj, depth: int = 0):
    """The plain value a tagged form stands for; ValueError for anything malformed."""
    try:
        return _decode(obj, depth)
    except (TypeError, IndexError, KeyError, OverflowError, RecursionError) as exc:
        raise ValueError(f"malformed value: {exc}") from None


def _decode(obj, depth: int):
    if depth > MAX_DEPTH or type(obj) is not list or not obj or type(obj[0]) is not str:
        raise ValueError("malformed value")
    tag, args = obj[0], obj[1:]
    if tag == "none" and not args:
        return None
    if tag == "bool" and type(args[0]) is bool:
        return args[0]
    if tag == "int" and type(args[0]) is str:
        return int(args[0])
    if tag == "float" and type(args[0]) is str:
        return float.fromhex(args[0])
    if tag == "complex" and all(type(a) is str for a in args[:2]):
        return complex(float.fromhex(args[0]), float.fromhex(args[1]))
    if tag == "str" and type(args[0]) is str:
        return args[0]
    if tag == "bytes" and type(args[0]) is str:
        return args[0].encode("latin-1")
    if tag == "range" and len(args) == 3 and all(type(a) is int for a in args):
        if len(range(*args)) > MAX_ITEMS:  # list(range(10**12)) in a verdict would exhaust memory
            raise ValueError("range too long")
        return range(*args)
    if tag in ("list", "tuple", "set", "frozenset") and type(args[0]) is list:
        items = [_decode(item, depth + 1) for item in args[0]]
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
    if tag == "dict" and type(args[0]) is list:
        return {_decode(k, depth + 1): _decode(v, depth + 1) for k, v in args[0]}
    raise ValueError(f"malformed value with tag {tag!r}")

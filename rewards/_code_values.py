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

Decoding costs time linear in the claim, whatever the claim: numbers are strict ASCII (ints as
hex, so no decimal conversion and no 4,300-digit cap: big ints come back whole), a value has
at most ``MAX_NODES`` parts and ints at most ``MAX_INT_HEX`` hex digits, and a value in which
more than ``MAX_SHARED_HASH`` distinct hashable parts share one hash is refused (a set or dict of
colliding keys would cost quadratic time to build, and so would ``set()`` of such a list).
"""

from __future__ import annotations

MAX_DEPTH = 64
MAX_NODES = 200_000  # parts of one value; an iterator is read to this many items at most
MAX_INT_HEX = 1 << 16  # hex digits of an int: 262,144 bits, about 79,000 decimal digits
MAX_SHARED_HASH = 4  # distinct hashable parts of one value allowed to share a hash
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
        return ["int", hex(value)]  # linear both ways, and exempt from the 4,300-digit str cap
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
            if len(items) >= MAX_NODES:
                raise TypeError("iterator too long")
            items.append(encode(item, depth + 1))
        return ["list", items]
    raise TypeError(f"a {name} is not a plain value")


def decode(obj):
    """The plain value a tagged form stands for; ValueError for anything malformed or too costly."""
    try:
        return _Decoder().value(obj, 0)
    except (TypeError, IndexError, KeyError, OverflowError, RecursionError) as exc:
        raise ValueError(f"malformed value: {exc}") from None


class _Decoder:
    """One decode: counts the parts built so far and the distinct hashable parts per hash."""

    def __init__(self):
        self.nodes = 0
        self.first: dict[int, object] = {}  # hash -> the first hashable part seen with it
        self.crowded: dict[int, list] = {}  # hash -> the distinct parts sharing it, once two do

    def value(self, obj, depth: int):
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise ValueError(f"value has too many parts (over {MAX_NODES})")
        if depth > MAX_DEPTH or type(obj) is not list or not obj or type(obj[0]) is not str:
            raise ValueError("malformed value")
        value = self._build(obj[0], obj, depth)
        if type(value) not in (list, set, dict):  # hashable: guard the tables it may end up in
            try:
                key = hash(value)
            except TypeError:  # a tuple holding a list: it can go in no table
                return value
            first = self.first.setdefault(key, value)
            if first is not value and first != value:
                self._crowd(key, first, value)
        return value

    def _crowd(self, key: int, first, value) -> None:
        seen = self.crowded.setdefault(key, [first])
        if not any(value == other for other in seen):
            seen.append(value)
            if len(seen) > MAX_SHARED_HASH:
                raise ValueError(f"more than {MAX_SHARED_HASH} distinct parts share one hash")

    def _build(self, tag: str, obj: list, depth: int):
        arg = obj[1] if len(obj) == 2 else None
        if tag == "int" and type(arg) is str and len(arg) <= MAX_INT_HEX + 3:
            value = int(arg, 16)
            if hex(value) == arg:  # the one canonical form: no spaces, "_", non-ASCII digits
                return value
        if tag == "str" and type(arg) is str:
            return arg
        if tag in ("list", "tuple", "set", "frozenset") and type(arg) is list:
            items = [self.value(item, depth + 1) for item in arg]
            return items if tag == "list" else {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
        if tag == "dict" and type(arg) is list:
            return {self.value(k, depth + 1): self.value(v, depth + 1) for k, v in arg}
        if tag == "float" and type(arg) is str:
            return _float(arg)
        if tag == "none" and len(obj) == 1:
            return None
        if tag == "bool" and type(arg) is bool:
            return arg
        if tag == "bytes" and type(arg) is str:
            return arg.encode("latin-1")
        args = obj[1:]
        if tag == "complex" and len(args) == 2 and all(type(a) is str for a in args):
            return complex(_float(args[0]), _float(args[1]))
        if tag == "range" and len(args) == 3 and all(type(a) is int for a in args):
            if len(range(*args)) > MAX_NODES:  # list(range(10**12)) in a verdict would exhaust memory
                raise ValueError("range too long")
            return range(*args)
        raise ValueError(f"malformed value with tag {tag!r}")


def _float(text: str) -> float:
    value = float.fromhex(text)
    if value.hex() != text:  # the one canonical form, as ``float.hex`` writes it
        raise ValueError("malformed float")
    return value

"""The shell commands of one fenced block of README.md, so a test runs what the README says.

A block is found by the marker line just above its opening fence (an HTML comment, invisible on
GitHub). Commands are the block's lines, with backslash continuations joined; blank lines and
whole-line comments are skipped; a trailing `# comment` stays (the shell ignores it).
"""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def fenced_block(text: str, marker: str) -> list[str]:
    """The lines inside the fenced block that starts on the line after `marker`."""
    lines = text.splitlines()
    at = [i for i, line in enumerate(lines) if line.strip() == marker]
    if len(at) != 1:
        raise ValueError(f"README.md: expected the marker {marker!r} once, found it {len(at)} times")
    fence = lines[at[0] + 1].strip() if at[0] + 1 < len(lines) else ""
    if not fence.startswith("```"):
        raise ValueError(f"README.md: the line after {marker!r} is not an opening ``` fence: {fence!r}")
    block = []
    for line in lines[at[0] + 2:]:
        if line.strip() == "```":
            return block
        block.append(line)
    raise ValueError(f"README.md: the block after {marker!r} is never closed")


def commands(block: list[str]) -> list[str]:
    """One string per shell command: continuations joined, blanks and comment lines dropped."""
    out, pending = [], ""
    for line in block:
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        out.append(pending + stripped)
        pending = ""
    if pending:
        out.append(pending.rstrip())
    return out


def readme_commands(marker: str, readme: Path = README) -> list[str]:
    return commands(fenced_block(readme.read_text(), marker))

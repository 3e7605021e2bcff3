"""Text from submitters and providers, made safe to show on an operator's terminal.

Ids, labels, outputs, reasons and provider messages are chosen by whoever submits a job (or by a model they
prompt). Printed raw, `ESC[2J` clears the screen, `ESC]8;;...` plants a link, `ESC]52;...` writes the
clipboard, a bare CR overwrites what the line said, and bidi overrides reorder it. Every human-readable
output (tables, progress, error lines) goes through `printable`; machine outputs (`--json`, jsonl, csv)
stay byte-exact.
"""

from __future__ import annotations

import re

__all__ = ["printable", "rich_printable"]

# C0 controls, DEL, C1 controls (0x9b is an 8-bit CSI), the line/paragraph separators, and the bidi
# embedding, override and isolate marks ("Trojan Source").
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    named = _NAMED.get(ch)
    if named:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """`text` as one line with every control character written as an escape (`\\x1b`, `\\n`, `\\u202e`)."""
    text = text if isinstance(text, str) else str(text)
    return _UNSAFE.sub(_escape, text)


def rich_printable(text: object) -> str:
    """`printable`, and rich's markup brackets escaped too: a `[link=...]` id must not become a hyperlink."""
    from rich.markup import escape

    return escape(printable(text))

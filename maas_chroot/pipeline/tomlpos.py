"""Where each key of a TOML file is: the line numbers ``tomllib`` does not keep.

``tomllib`` (and ``tomli`` on 3.10) parse a file into plain dicts and keep no positions,
and no well-kept TOML library does (tomlkit keeps the text, not line numbers). A recipe
error must name the line, so :func:`locate` scans the text once more, after ``tomllib``
has accepted it, with just enough of the grammar to know where a key is defined: table
headers (``[image.web]``, ``[[x]]``), dotted and quoted keys (``image.web.packages``,
``"/etc/motd"``), inline tables (``files = {"/etc/motd" = "motd.txt"}``) and the strings,
arrays and comments that may hide text looking like a key (multi-line strings and arrays
included). It maps each key path (``("image", "web", "packages")``) to the 1-based line
of its first definition; a table header maps its own path. It never raises: what it
cannot follow is left out, and the caller falls back to the enclosing table's line.
"""

from __future__ import annotations

import contextlib
import re

Path_ = tuple[str, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


def locate(text: str) -> dict[Path_, int]:
    """``{key path: line}`` for every key and table header of the TOML ``text``."""
    found: dict[Path_, int] = {}
    with contextlib.suppress(IndexError, ValueError):  # not followed: keep what was found
        _Scanner(text, found).run()
    return found


class _Scanner:
    def __init__(self, text: str, found: dict[Path_, int]) -> None:
        self.text, self.found = text, found
        self.i, self.line = 0, 1
        self.table: Path_ = ()
        #: open brackets: ("{", key path of the inline table) or ("[", key path of the array)
        self.stack: list[tuple[str, Path_]] = []
        self.value_path: Path_ = ()

    def record(self, path: Path_) -> None:
        for n in range(1, len(path) + 1):  # a dotted key defines its tables too
            self.found.setdefault(path[:n], self.line)

    def run(self) -> None:
        text = self.text
        expect_key = True
        while self.i < len(text):
            c = text[self.i]
            if c == "\n":
                self.line += 1
                self.i += 1
                expect_key = expect_key or not self.stack
            elif c in " \t\r":
                self.i += 1
            elif c == "#":
                end = text.find("\n", self.i)
                self.i = len(text) if end < 0 else end
            elif expect_key and not self.stack and c == "[":
                self.header()
                expect_key = False
            elif expect_key and (not self.stack or self.stack[-1][0] == "{"):
                keys = self.key()
                base = self.stack[-1][1] if self.stack else self.table
                self.value_path = (*base, *keys)
                self.record(self.value_path)
                self.skip_spaces()
                self.i += 1  # the "="
                expect_key = False
            elif c in "\"'":
                self.string()
            elif c in "{[":
                self.stack.append((c, self.value_path))
                self.i += 1
                expect_key = c == "{"
            elif c in "}]":
                self.stack.pop()
                self.i += 1
            elif c == ",":
                self.i += 1
                expect_key = bool(self.stack) and self.stack[-1][0] == "{"
            else:
                self.i += 1

    def header(self) -> None:
        double = self.text.startswith("[[", self.i)
        self.i += 2 if double else 1
        self.skip_spaces()
        self.table = self.key()
        self.record(self.table)
        self.skip_spaces()
        self.i += 2 if double else 1

    def key(self) -> Path_:
        """A dotted key at ``self.i``: ``a.b``, ``"a b".c``, ``'lit'``."""
        parts: list[str] = []
        while True:
            self.skip_spaces()
            c = self.text[self.i]
            if c in "\"'":
                parts.append(self.string())
            else:
                m = _BARE.match(self.text, self.i)
                if m is None:
                    raise ValueError(f"no key at line {self.line}")
                parts.append(m.group())
                self.i = m.end()
            self.skip_spaces()
            if self.text[self.i] != ".":
                return tuple(parts)
            self.i += 1

    def skip_spaces(self) -> None:
        while self.i < len(self.text) and self.text[self.i] in " \t":
            self.i += 1

    def string(self) -> str:
        """Skip a string (basic, literal, multi-line) at ``self.i``; return its value."""
        text, quote = self.text, self.text[self.i]
        triple = text.startswith(quote * 3, self.i)
        end_mark = quote * 3 if triple else quote
        self.i += len(end_mark)
        out: list[str] = []
        while not text.startswith(end_mark, self.i):
            c = text[self.i]
            if c == "\n":
                self.line += 1
            if c == "\\" and quote == '"':
                nxt = text[self.i + 1]
                if nxt in _ESCAPES:
                    out.append(_ESCAPES[nxt])
                    self.i += 2
                    continue
                if nxt in "uU":
                    width = 4 if nxt == "u" else 8
                    out.append(chr(int(text[self.i + 2:self.i + 2 + width], 16)))
                    self.i += 2 + width
                    continue
                self.i += 1  # a line-ending backslash in a multi-line string
                continue
            out.append(c)
            self.i += 1
        self.i += len(end_mark)
        while triple and text.startswith(quote, self.i):  # up to two quotes end the value
            out.append(quote)
            self.i += 1
        return "".join(out)

"""The small YAML subset a DCASE meta.yaml is written in: a writer and a strict reader.

The project does not depend on a YAML library (PyYAML arrives only as a dependency of
dependencies, which DESIGN rule 18 does not let us borrow), and the meta files of DCASE
submissions use a small part of YAML. This module writes that part and reads it back, and reads
the organisers' template style, with PyYAML's (YAML 1.1) meaning for every value it accepts
(the tests compare with PyYAML where it is installed):

* block mappings (`key: value`, `key:` + an indented block) and block sequences (`- value`,
  `- key: value` + the mapping's further keys aligned under the first), a sequence under a key
  indented or at the key's own indentation;
* one-line flow collections of scalars: `{ accuracy: 55.0, logloss: !!null }`, `[a, b]`;
* scalars: plain, 'single-quoted', "double-quoted" (JSON escapes); `null`, `~`, `!!null` and an
  empty value are None; true/false/yes/no/on/off (any case as YAML 1.1 spells them) are bools;
  integers (with `_` separators, not 0x/0o/0b); floats with a '.' or `.inf`/`.nan`;
* `#` comments on their own line or after a value, a leading `---`.

Anything else (anchors and aliases, block scalars `|` / `>`, other tags, multi-line plain
scalars, nested flow collections, tabs in indentation, duplicate keys) is refused with a
`YamlError` naming the line, rather than read differently from a real YAML parser.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping

INDENT = 2
_NULLS = {"", "~", "null", "Null", "NULL", "!!null"}
_BOOLS = {**{w: True for w in ("true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON")},
          **{w: False for w in ("false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF")}}
# PyYAML's (YAML 1.1) integer and float resolvers, decimal forms only.
_INT = re.compile(r"[-+]?(0|[1-9][0-9_]*)$")
_FLOAT = re.compile(r"([-+]?[0-9][0-9_]*\.[0-9_]*([eE][-+][0-9]+)?|\.[0-9_]+([eE][-+][0-9]+)?)$")
# Numbers YAML 1.1 reads in other bases (octal 017, 0x1f, 0b101, sexagesimal 1:30): refused, so
# that no value is read differently from a real YAML parser.
_OTHER_NUMBERS = re.compile(r"[-+]?(0[0-7_]+|0b[01_]+|0x[0-9a-fA-F_]+|[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?)$")
_SPECIAL_FLOATS = {".inf": math.inf, ".Inf": math.inf, ".INF": math.inf, "+.inf": math.inf,
                   "-.inf": -math.inf, "-.Inf": -math.inf, "-.INF": -math.inf,
                   ".nan": math.nan, ".NaN": math.nan, ".NAN": math.nan}
# Plain (unquoted) strings the writer leaves unquoted: safe characters, no ": " or " #".
_SAFE_PLAIN = re.compile(r"[A-Za-z0-9_(][A-Za-z0-9 _./(),%+=@-]*[A-Za-z0-9_./()%+@-]$|[A-Za-z_]$")


class YamlError(ValueError):
    """A text outside the supported subset, or not valid YAML; the message names the line."""


# --- writing ------------------------------------------------------------------------------------

def scalar(value: Any) -> str:
    """One value as YAML text that reads back as the same value."""
    if value is None:
        return "!!null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:  # 1e-05: YAML 1.1 needs "1.0e-05"
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        if "e" in text and text.split("e")[1][0] not in "+-":
            mantissa, exponent = text.split("e")
            text = f"{mantissa}e+{exponent}"
        return text
    if isinstance(value, str):
        try:
            plain = _SAFE_PLAIN.match(value) is not None and _plain_value(value) == value
        except YamlError:
            plain = False
        return value if plain else json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot write a {type(value).__name__} as a YAML scalar: {value!r}")


def dump(data: Mapping[str, Any], comments: Mapping[str, str] | None = None) -> str:
    """YAML text of a mapping of mappings, lists and scalars.

    Args:
      comments: {dotted key path ("system.complexity.macs"): comment}; written as `# ...`
        lines above that key (a multi-line comment gives several lines). Paths through a list
        are not supported.
    """
    comments = dict(comments or {})
    lines: list[str] = []
    _dump_mapping(data, 0, "", comments, lines)
    return "\n".join(lines) + "\n"


def _key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"YAML keys must be strings here, got {key!r}")
    return scalar(key)


def _dump_mapping(data: Mapping[str, Any], indent: int, path: str, comments: Mapping[str, str],
                  lines: list[str]) -> None:
    pad = " " * indent
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else key
        if dotted in comments:
            if lines and indent == 0:
                lines.append("")
            lines.extend(f"{pad}# {line}".rstrip() for line in comments[dotted].splitlines())
        head = f"{pad}{_key(key)}:"
        if isinstance(value, Mapping) and value:
            lines.append(head)
            _dump_mapping(value, indent + INDENT, dotted, comments, lines)
        elif isinstance(value, (list, tuple)) and value:
            lines.append(head)
            _dump_sequence(value, indent + INDENT, lines)
        else:
            lines.append(f"{head} {_empty_or_scalar(value)}")


def _empty_or_scalar(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, (list, tuple)):
        return "[]"
    return scalar(value)


def _dump_sequence(items: Any, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for item in items:
        if isinstance(item, Mapping) and item:
            sub: list[str] = []
            _dump_mapping(item, indent + INDENT, "", {}, sub)
            lines.append(f"{pad}- {sub[0].lstrip()}")  # the first key shares the "- " line
            lines.extend(sub[1:])
        elif isinstance(item, (list, tuple)) and item:
            raise TypeError("lists of lists are not supported in meta.yaml")
        else:
            lines.append(f"{pad}- {_empty_or_scalar(item)}")


# --- reading ------------------------------------------------------------------------------------

class _Line:
    __slots__ = ("number", "indent", "text")

    def __init__(self, number: int, indent: int, text: str):
        self.number, self.indent, self.text = number, indent, text


def _strip_comment(text: str, number: int) -> str:
    """The line without a trailing `# comment` (a '#' after whitespace, outside quotes)."""
    quote = None
    i = 0
    while i < len(text):
        c = text[i]
        if quote == '"' and c == "\\":
            i += 2
            continue
        if quote:
            if c == quote:
                if quote == "'" and text[i + 1:i + 2] == "'":
                    i += 2
                    continue
                quote = None
        elif c in "'\"" and (i == 0 or text[i - 1] in " -:[{,"):
            quote = c
        elif c == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip()
        i += 1
    if quote:
        raise YamlError(f"line {number}: unterminated {quote}-quoted string")
    return text.rstrip()


def _lines(text: str) -> list[_Line]:
    out = []
    for number, raw in enumerate(text.splitlines(), start=1):
        body = raw.lstrip(" ")
        if body.startswith("\t"):
            raise YamlError(f"line {number}: tab in indentation (YAML indents with spaces)")
        stripped = _strip_comment(body, number)
        if not stripped:
            continue
        if stripped == "---" and not out:
            continue
        if stripped.startswith(("%", "---", "...")):
            raise YamlError(f"line {number}: directives and multiple documents are not supported")
        out.append(_Line(number, len(raw) - len(body), stripped))
    return out


def _is_item(text: str) -> bool:
    return text == "-" or text.startswith("- ")


def _find_colon(text: str) -> int:
    """Index of the ':' that ends a mapping key (followed by a space or the end), -1 if none."""
    quote = None
    depth = 0
    for i, c in enumerate(text):
        if quote:
            if c == quote:
                quote = None
            continue
        if c in "'\"" and (i == 0 or text[i - 1] in " [{,"):
            quote = c
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        elif c == ":" and depth == 0 and (i + 1 == len(text) or text[i + 1] == " "):
            return i
    return -1


def _plain_value(text: str) -> Any:
    """A plain scalar resolved as YAML 1.1 does.

    Raises:
      YamlError: (without a line number) for numbers in other bases (`_OTHER_NUMBERS`).
    """
    if _OTHER_NUMBERS.match(text):
        raise YamlError(f"{text!r} is a number in another base or sexagesimal in YAML 1.1; quote it "
                        "if it is a string")
    if text in _NULLS:
        return None
    if text in _BOOLS:
        return _BOOLS[text]
    if _INT.match(text):
        return int(text.replace("_", ""))
    if text in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[text]
    if _FLOAT.match(text):
        return float(text.replace("_", ""))
    return text


def _quoted(text: str, number: int) -> tuple[str, str]:
    """(the string, the rest of the text after it) of a text starting with a quote."""
    q = text[0]
    if q == '"':
        i = 1
        while i < len(text):
            if text[i] == "\\":
                i += 2
                continue
            if text[i] == '"':
                try:
                    return json.loads(text[:i + 1]), text[i + 1:]
                except json.JSONDecodeError as err:
                    raise YamlError(f"line {number}: bad double-quoted string ({err.msg})") from None
            i += 1
    else:
        i = 1
        while i < len(text):
            if text[i] == "'":
                if text[i + 1:i + 2] == "'":
                    i += 2
                    continue
                return text[1:i].replace("''", "'"), text[i + 1:]
            i += 1
    raise YamlError(f"line {number}: unterminated {q}-quoted string")


def _value(text: str, number: int, flow: bool = False) -> Any:
    """A scalar or one-line flow collection."""
    text = text.strip()
    if not text:
        return None
    if text[0] in "'\"":
        value, rest = _quoted(text, number)
        if rest.strip():
            raise YamlError(f"line {number}: unexpected text after a quoted string: {rest.strip()!r}")
        return value
    if not flow and text[0] in "[{":
        return _flow(text, number)
    if text[0] in "&*|>" or (text[0] == "!" and text != "!!null"):
        what = {"&": "anchors", "*": "aliases", "|": "block scalars", ">": "block scalars"}.get(text[0], "tags")
        raise YamlError(f"line {number}: {what} are not supported ({text!r}); write the value on one line")
    if flow and any(c in text for c in "[]{}"):
        raise YamlError(f"line {number}: nested flow collections are not supported ({text!r})")
    if text[0] in "@`%" or (text[0] in "-?:" and text[1:2] in ("", " ")):
        raise YamlError(f"line {number}: a plain value cannot start with {text[0]!r}; quote it")
    if ": " in text or text.endswith(":"):
        raise YamlError(f"line {number}: ': ' inside a value ({text!r}); quote the value")
    try:
        return _plain_value(text)
    except YamlError as err:
        raise YamlError(f"line {number}: {err}") from None


def _split_flow(body: str, number: int) -> list[str]:
    parts, quote, start = [], None, 0
    for i, c in enumerate(body):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == ",":
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    if parts and not parts[-1].strip():  # a trailing comma
        parts.pop()
    if any(not p.strip() for p in parts):
        raise YamlError(f"line {number}: empty entry in a flow collection")
    return parts


def _flow(text: str, number: int) -> Any:
    close = {"[": "]", "{": "}"}[text[0]]
    if not text.endswith(close):
        raise YamlError(f"line {number}: a flow collection must open and close on one line ({text!r})")
    parts = _split_flow(text[1:-1], number)
    if close == "]":
        return [_value(p, number, flow=True) for p in parts]
    out: dict[str, Any] = {}
    for part in parts:
        colon = _find_colon(part.strip())
        if colon < 0:
            raise YamlError(f"line {number}: flow mapping entry without 'key: value': {part.strip()!r}")
        key = _key_of(part.strip()[:colon], number)
        if key in out:
            raise YamlError(f"line {number}: duplicate key {key!r}")
        out[key] = _value(part.strip()[colon + 1:], number, flow=True)
    return out


def _key_of(text: str, number: int) -> str:
    text = text.strip()
    if text and text[0] in "'\"":
        key, rest = _quoted(text, number)
        if rest.strip():
            raise YamlError(f"line {number}: unexpected text after a quoted key")
        return key
    if not text or text[0] in "[{&*!|>?-@`%":
        raise YamlError(f"line {number}: unsupported key {text!r}")
    return text


class _Parser:
    def __init__(self, lines: list[_Line]):
        self.lines = lines
        self.i = 0

    def block(self, indent: int) -> Any:
        line = self.lines[self.i]
        return self.sequence(indent) if _is_item(line.text) else self.mapping(indent)

    def _child(self, parent_indent: int, allow_same_indent_sequence: bool) -> Any:
        """The block under a `key:` / `-` line, or None when there is none."""
        if self.i >= len(self.lines):
            return None
        nxt = self.lines[self.i]
        if nxt.indent > parent_indent or (allow_same_indent_sequence and nxt.indent == parent_indent
                                          and _is_item(nxt.text)):
            return self.block(nxt.indent)
        return None

    def mapping(self, indent: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.indent < indent or (line.indent == indent and _is_item(line.text)):
                break
            if line.indent > indent:
                raise YamlError(f"line {line.number}: unexpected indentation (a value continued on "
                                "another line is not supported: write it on one line or quote it)")
            colon = _find_colon(line.text)
            if colon < 0:
                raise YamlError(f"line {line.number}: expected 'key: value', got {line.text!r}")
            key = _key_of(line.text[:colon], line.number)
            if key in out:
                raise YamlError(f"line {line.number}: duplicate key {key!r}")
            rest = line.text[colon + 1:].strip()
            self.i += 1
            if rest:
                out[key] = _value(rest, line.number)
            else:
                out[key] = self._child(indent, allow_same_indent_sequence=True)
        return out

    def sequence(self, indent: int) -> list[Any]:
        out: list[Any] = []
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.indent != indent or not _is_item(line.text):
                if line.indent > indent:
                    raise YamlError(f"line {line.number}: unexpected indentation in a list")
                break
            rest = line.text[1:].lstrip(" ")
            if not rest:
                self.i += 1
                out.append(self._child(indent, allow_same_indent_sequence=False))
                continue
            column = indent + len(line.text) - len(rest)
            if _is_item(rest) or (_find_colon(rest) >= 0 and rest[0] not in "[{"):
                # "- key: value": a mapping (or nested list) whose block starts at this column.
                self.lines[self.i] = _Line(line.number, column, rest)
                out.append(self.block(column))
            else:
                self.i += 1
                out.append(_value(rest, line.number))
        return out


def load(text: str) -> Any:
    """The value of a YAML text in the supported subset (a mapping for a meta.yaml).

    Raises:
      YamlError: naming the first line outside the subset.
    """
    lines = _lines(text)
    if not lines:
        return None
    parser = _Parser(lines)
    if lines[0].indent != 0:
        raise YamlError(f"line {lines[0].number}: the document must start at column 0")
    value = parser.block(0)
    if parser.i < len(lines):
        line = lines[parser.i]
        raise YamlError(f"line {line.number}: unexpected text at this indentation: {line.text!r}")
    return value

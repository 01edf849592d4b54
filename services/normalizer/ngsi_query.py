"""The NGSI-LD query language (ETSI GS CIM 009, clause 4.9) for `q=`: parse once, evaluate on normalized entities.

    q=zone1_temperature>180;state=="running"
    q=(speed>=10|speed<2);partOf==urn:ngsi-ld:Line:line1
    q=zone1_temperature.observedAt>=2025-11-29T07:00:00Z
    q=lastInspection[verdict]=="defective"
    q=zone1_temperature==170..190          (a range)        q=state=="running","stopped"   (a list)
    q=name~=(?i)^cookie                    (a pattern)      q=zone1_temperature            (the attribute exists)

Grammar, as the standard writes it: a query is terms joined by `;` (and) and `|` (or), `;` binding tighter than
`|`, with parentheses for grouping. A term is an attribute path alone (it exists) or followed by an operator
(`==`, `!=`, `>`, `>=`, `<`, `<=`, `~=`, `!~=`) and a value: a number, a "quoted string", `true`/`false`, a date,
time or date-time (unquoted, ISO 8601), a URI; for `==` and `!=` also a comma list of values or a `min..max`
range. An attribute path is `attr`, `attr.subAttr` (a property of the property, or `observedAt`, `unitCode`) and
`attr[key][key]` (inside a structured value). A Property compares its value, a Relationship its object; an array
matches when one of its elements does. Values of different kinds never match (`"5"` is not 5). Anything else is a
syntax error: `QuerySyntaxError`, which the API answers with 400 BadRequestData.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEFAULT_CONTEXT = "https://uri.etsi.org/ngsi-ld/default-context/"
_ATTR = re.compile(r"[A-Za-z_@][A-Za-z0-9_\-]*")
_OPS = ("==", "!=", ">=", "<=", "!~=", "~=", ">", "<")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIME = re.compile(r"\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?Z?")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s\"'()|;,]+")
_META = {"observedAt", "unitCode", "createdAt", "modifiedAt", "datasetId"}


class QuerySyntaxError(ValueError):
    """`q` is not a valid NGSI-LD query; the message says where and why."""


@dataclass(frozen=True)
class DateTime:
    """A date-time value of a query (compared as an instant)."""

    at: dt.datetime


@dataclass(frozen=True)
class Uri:
    value: str


Predicate = Callable[[dict[str, Any]], bool]


def short_name(name: str) -> str:
    """An attribute or type name, with the default-context expansion removed (the API's own names are terms of
    the core context's default vocabulary)."""
    return name[len(DEFAULT_CONTEXT):] if name.startswith(DEFAULT_CONTEXT) else name


def parse_datetime(text: str) -> dt.datetime | None:
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, why: str) -> QuerySyntaxError:
        return QuerySyntaxError(f"invalid q at position {self.pos}: {why} (in {self.text!r})")

    def peek(self, token: str) -> bool:
        return self.text.startswith(token, self.pos)

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    # query := and ('|' and)* ; and := factor (';' factor)* ; factor := '(' query ')' | term
    def query(self) -> Predicate:
        parts = [self.conjunction()]
        while self.peek("|"):
            self.pos += 1
            parts.append(self.conjunction())
        if len(parts) == 1:
            return parts[0]
        return lambda entity: any(p(entity) for p in parts)

    def conjunction(self) -> Predicate:
        parts = [self.factor()]
        while self.peek(";"):
            self.pos += 1
            parts.append(self.factor())
        if len(parts) == 1:
            return parts[0]
        return lambda entity: all(p(entity) for p in parts)

    def factor(self) -> Predicate:
        if self.peek("("):
            self.pos += 1
            inner = self.query()
            if not self.peek(")"):
                raise self.fail("expected ')'")
            self.pos += 1
            return inner
        return self.term()

    def attribute_path(self) -> tuple[str, list[str], list[str]]:
        """attr[.sub][[key]...] -> (attribute, sub-attribute path, keys into the value)."""
        names = []
        match = _ATTR.match(self.text, self.pos)
        if not match:
            raise self.fail("expected an attribute name")
        names.append(match.group())
        self.pos = match.end()
        while self.peek("."):
            self.pos += 1
            match = _ATTR.match(self.text, self.pos)
            if not match:
                raise self.fail("expected a sub-attribute name after '.'")
            names.append(match.group())
            self.pos = match.end()
        keys = []
        while self.peek("["):
            self.pos += 1
            match = _ATTR.match(self.text, self.pos)
            if not match or not self.text.startswith("]", match.end()):
                raise self.fail("expected [name]")
            keys.append(match.group())
            self.pos = match.end() + 1
        return names[0], names[1:], keys

    def value(self) -> Any:
        text, pos = self.text, self.pos
        if text.startswith('"', pos):
            end = pos + 1
            out = []
            while end < len(text) and text[end] != '"':
                if text[end] == "\\" and end + 1 < len(text):
                    end += 1
                out.append(text[end])
                end += 1
            if end >= len(text):
                raise self.fail("unterminated string")
            self.pos = end + 1
            return "".join(out)
        for literal, result in (("true", True), ("false", False)):
            if text.startswith(literal, pos) and not _ATTR.match(text, pos + len(literal)):
                self.pos = pos + len(literal)
                return result
        for pattern in (_DATETIME, _DATE, _TIME):
            match = pattern.match(text, pos)
            if match and self._boundary(match.end()):
                found = match.group()
                self.pos = match.end()
                if pattern is _DATETIME:
                    parsed = parse_datetime(found)
                    if parsed is None:
                        raise self.fail(f"invalid date-time {found!r}")
                    return DateTime(parsed)
                return found  # dates and times compare as their ISO text
        match = _NUMBER.match(text, pos)
        if match and self._boundary(match.end()):
            self.pos = match.end()
            number = match.group()
            return float(number) if any(c in number for c in ".eE") else int(number)
        match = _URI.match(text, pos)
        if match:
            end = match.end()
            while text.startswith("..", end - 2) and end > pos:  # a URI never ends a range's '..'
                end -= 1
            self.pos = end
            return Uri(text[pos:end])
        raise self.fail("expected a value: a number, a \"quoted string\", true, false, a date-time or a URI "
                        "(strings are quoted: state==\"running\")")

    def _boundary(self, end: int) -> bool:
        return end >= len(self.text) or self.text[end] in ";|),." or self.text.startswith("..", end)

    def term(self) -> Predicate:
        attribute, sub, keys = self.attribute_path()
        op = next((o for o in _OPS if self.peek(o)), None)
        if op is None:
            if self.at_end() or self.text[self.pos] in ";|)":
                return lambda entity: bool(_targets(entity, attribute, sub, keys))
            raise self.fail("expected an operator (==, !=, >, >=, <, <=, ~=, !~=) or ';', '|', ')'")
        self.pos += len(op)
        if op in ("~=", "!~="):
            end = self.pos
            depth = 0
            while end < len(self.text):
                c = self.text[end]
                if c == "(":
                    depth += 1
                elif c == ")":
                    if depth == 0:
                        break
                    depth -= 1
                elif c in ";|" and depth == 0:
                    break
                end += 1
            source = self.text[self.pos:end]
            if not source:
                raise self.fail("expected a regular expression")
            try:
                pattern = re.compile(source)
            except re.error as exc:
                raise self.fail(f"invalid regular expression: {exc}") from None
            self.pos = end
            negate = op == "!~="

            def matches(entity: dict[str, Any]) -> bool:
                found = any(isinstance(v, str) and pattern.search(v) for v in _targets(entity, attribute, sub, keys))
                return found != negate
            return matches
        first = self.value()
        if op in ("==", "!=") and self.peek(".."):
            self.pos += 2
            high = self.value()
            if _kind(first) != _kind(high) or _kind(first) in ("bool", "uri"):
                raise self.fail("a range needs two values of the same comparable kind")
            test: Callable[[Any], bool] = lambda v: _compare(v, ">=", first) and _compare(v, "<=", high)  # noqa: E731
        elif op in ("==", "!=") and self.peek(","):
            values = [first]
            while self.peek(","):
                self.pos += 1
                values.append(self.value())
            test = lambda v: any(_compare(v, "==", x) for x in values)  # noqa: E731
        else:
            if op not in ("==", "!=") and _kind(first) in ("bool", "uri"):
                raise self.fail(f"{op} needs a number, a string or a date-time")
            compare_op = "==" if op == "!=" else op
            test = lambda v: _compare(v, compare_op, first)  # noqa: E731
        if op == "!=":
            return lambda entity: (bool(values := _targets(entity, attribute, sub, keys))
                                   and not any(test(v) for v in values))
        return lambda entity: any(test(v) for v in _targets(entity, attribute, sub, keys))


def parse_q(text: str) -> Predicate:
    """The predicate of an NGSI-LD query; raises QuerySyntaxError."""
    if not text.strip():
        raise QuerySyntaxError("q is empty")
    parser = _Parser(text.strip())
    predicate = parser.query()
    if not parser.at_end():
        raise parser.fail(f"unexpected {parser.text[parser.pos]!r}")
    return predicate


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, DateTime):
        return "datetime"
    if isinstance(value, Uri):
        return "uri"
    return "string"


def _compare(target: Any, op: str, value: Any) -> bool:
    """target (from the entity) op value (from the query); values of different kinds never match."""
    kind = _kind(value)
    if kind == "datetime":
        if not isinstance(target, str):
            return False
        parsed = parse_datetime(target)
        if parsed is None:
            return False
        left, right = parsed, value.at
    elif kind == "uri":
        if not isinstance(target, str):
            return False
        left, right = target, value.value
    elif kind == "number":
        if isinstance(target, bool) or not isinstance(target, int | float):
            return False
        left, right = target, value
    elif kind == "bool":
        if not isinstance(target, bool):
            return False
        left, right = target, value
    else:
        if not isinstance(target, str):
            return False
        left, right = target, value
    if op == "==":
        return left == right
    if op == ">":
        return left > right
    if op == ">=":
        return left >= right
    if op == "<":
        return left < right
    if op == "<=":
        return left <= right
    raise AssertionError(op)


def _targets(entity: dict[str, Any], attribute: str, sub: list[str], keys: list[str]) -> list[Any]:
    """The values the path points at (arrays flattened: one matching element is enough); [] when absent."""
    node: Any = entity.get(attribute)
    if node is None:
        node = entity.get(DEFAULT_CONTEXT + attribute)
    if node is None:
        return []
    if attribute in ("id", "type"):
        current: Any = node
    else:
        current = None
        meta = False
        for i, name in enumerate(sub):
            if not isinstance(node, dict):
                return []
            if name in _META and i == len(sub) - 1:  # attr.observedAt, attr.unitCode
                current, meta = node.get(name), True
                break
            node = node.get(name)  # a property of the property
            if node is None:
                return []
        if not meta:
            current = _member(node)
    for key in keys:
        if not isinstance(current, dict) or key not in current:
            return []
        current = current[key]
    if current is None:
        return []
    if isinstance(current, list):
        return current
    return [current]


def _member(attr: Any) -> Any:
    """A Property's value, a Relationship's object (a plain value as is)."""
    if isinstance(attr, dict):
        if "object" in attr:
            return attr["object"]
        if "value" in attr:
            return attr["value"]
    return attr

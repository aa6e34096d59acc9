"""Asset selection expressions: parse text into a frozen syntax tree, print the tree back in
one canonical form, and resolve it against an :class:`~servo.core.graph.AssetGraph`.

The user documentation of the syntax is ``docs/selection.md``. The grammar, lowest
precedence first::

    expression   := intersection (("or" | "|" | "," | "-") intersection)*
    intersection := unary (("and" | "&") unary)*
    unary        := "not" unary | traversal
    traversal    := [up] primary [down]
    up           := "*" | [DIGITS] "+"
    down         := "*" | "+" [DIGITS]
    primary      := "(" expression ")" | "*" | KEY | ATTRIBUTE ":" VALUE ["=" VALUE]

Operators of one level associate to the left. Keywords and attribute names are
case-insensitive; asset keys and attribute values are not.

Two tokenizer rules keep the syntax unambiguous:

* after ``key:``, ``tag:``, ``group:``, ``owner:`` or ``kind:`` the value is read with its own
  character set (``.`` and ``@`` are allowed, and ``*`` too after ``key:`` where it is a
  wildcard); anything else needs double quotes;
* ``-`` inside a name belongs to the name (``a-b`` is one key), so the exclusion operator
  needs a space (or ``)``) before it: ``a - b``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final, Literal, NoReturn, assert_never

from servo.core.errors import DefinitionError, SelectionError
from servo.core.graph import AssetGraph
from servo.core.keys import AssetKey

__all__ = [
    "AllAssets",
    "Complement",
    "Difference",
    "ExactKey",
    "GroupFilter",
    "Intersection",
    "KeyGlob",
    "KindFilter",
    "OwnerFilter",
    "Selection",
    "SelectionNode",
    "TagFilter",
    "Traversal",
    "Union",
    "parse_selection",
    "resolve_selection",
]

# A bare key: components joined by "/". A trailing "/" is left for the error message to explain.
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*(?:/[A-Za-z0-9_][A-Za-z0-9_\-]*)*")
# Unquoted value after `key:`; `*` is a wildcard here, so `key:x*` is a pattern, not `x` + `*`.
_KEY_VALUE: Final = re.compile(r"[A-Za-z0-9_\-/*]+")
# Unquoted value after the other attributes: owners need `@` and `.`; `+` and `*` stay
# traversal markers so that `owner:a@b.com+` means "and its children".
_PLAIN_VALUE: Final = re.compile(r"[A-Za-z0-9_.@/\-]+")
_KEY_PATTERN_CHARS: Final = re.compile(r"[A-Za-z0-9_\-/*]+")

_KEYWORDS: Final = frozenset({"and", "or", "not"})
_ATTRIBUTES: Final = ("key", "tag", "group", "owner", "kind")
_MAX_NESTING: Final = 100
_MAX_DEPTH_DIGITS: Final = 6
_MAX_LISTED: Final = 20


# --------------------------------------------------------------------------------------------
# Syntax tree


@dataclass(frozen=True, slots=True)
class AllAssets:
    """Every asset of the graph (``*``)."""


@dataclass(frozen=True, slots=True)
class ExactKey:
    """One asset by its exact key (``orders``, ``key:analytics/orders``)."""

    key: AssetKey


@dataclass(frozen=True, slots=True)
class KeyGlob:
    """Assets whose canonical key matches ``pattern``; ``*`` matches any characters,
    including ``/`` (``key:analytics/*``)."""

    pattern: str

    def __post_init__(self) -> None:
        if "*" not in self.pattern:
            raise SelectionError(
                f"key pattern {self.pattern!r} has no `*`; use ExactKey for an exact key"
            )
        if not _KEY_PATTERN_CHARS.fullmatch(self.pattern):
            raise SelectionError(
                f"key pattern {self.pattern!r} can never match: asset keys contain only "
                "letters, digits, '_', '-' and '/'"
            )


@dataclass(frozen=True, slots=True)
class TagFilter:
    """Assets that carry tag ``name`` (with any value when ``value`` is None)."""

    name: str
    value: str | None = None

    def __post_init__(self) -> None:
        _require_text(self.name, "tag name")
        if self.value is not None:
            _require_text(self.value, f"value of tag {self.name!r}")


@dataclass(frozen=True, slots=True)
class GroupFilter:
    """Assets of one group (``group:raw``)."""

    group: str

    def __post_init__(self) -> None:
        _require_text(self.group, "group name")


@dataclass(frozen=True, slots=True)
class OwnerFilter:
    """Assets listing ``owner`` among their owners (``owner:ana@example.com``)."""

    owner: str

    def __post_init__(self) -> None:
        _require_text(self.owner, "owner")


@dataclass(frozen=True, slots=True)
class KindFilter:
    """Assets of one kind (``kind:dbt``)."""

    kind: str

    def __post_init__(self) -> None:
        _require_text(self.kind, "kind")


@dataclass(frozen=True, slots=True)
class Traversal:
    """``operand`` widened along dependency edges.

    ``upstream`` and ``downstream`` are numbers of levels: 0 means no traversal in that
    direction and None means every level. With both set, the result is the union of the two
    closures (``+x+`` is x, its parents and its children).
    """

    operand: SelectionNode
    upstream: int | None = 0
    downstream: int | None = 0

    def __post_init__(self) -> None:
        for name, depth in (("upstream", self.upstream), ("downstream", self.downstream)):
            if depth is not None and depth < 0:
                raise SelectionError(f"{name} depth {depth} is negative")
        if self.upstream == 0 and self.downstream == 0:
            raise SelectionError("a traversal needs an upstream or a downstream depth")


@dataclass(frozen=True, slots=True)
class Complement:
    """Every asset not in ``operand`` (``not x``)."""

    operand: SelectionNode


@dataclass(frozen=True, slots=True)
class Intersection:
    """Assets in every operand (``a and b``, ``a & b``)."""

    operands: tuple[SelectionNode, ...]

    def __post_init__(self) -> None:
        if len(self.operands) < 2:
            raise SelectionError("an intersection needs at least two operands")


@dataclass(frozen=True, slots=True)
class Union:
    """Assets in any operand (``a or b``, ``a | b``, ``a, b``)."""

    operands: tuple[SelectionNode, ...]

    def __post_init__(self) -> None:
        if len(self.operands) < 2:
            raise SelectionError("a union needs at least two operands")


@dataclass(frozen=True, slots=True)
class Difference:
    """Assets in ``base`` and in none of ``removed`` (``a - b - c``)."""

    base: SelectionNode
    removed: tuple[SelectionNode, ...]

    def __post_init__(self) -> None:
        if not self.removed:
            raise SelectionError("a difference needs at least one removed operand")


SelectionNode = (
    AllAssets
    | ExactKey
    | KeyGlob
    | TagFilter
    | GroupFilter
    | OwnerFilter
    | KindFilter
    | Traversal
    | Complement
    | Intersection
    | Union
    | Difference
)
_ATOMS: Final = (AllAssets, ExactKey, KeyGlob, TagFilter, GroupFilter, OwnerFilter, KindFilter)


def _require_text(value: object, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise SelectionError(f"{what} must be a non-empty string, got {value!r}")


@dataclass(frozen=True, slots=True)
class Selection:
    """A parsed asset selection: the root of a frozen syntax tree.

    Two selections are equal when their trees are; :meth:`to_string` gives the canonical text,
    which parses back to an equal selection.
    """

    root: SelectionNode

    def to_string(self) -> str:
        """The canonical text: keywords in lower case, ``or`` for every union, single spaces."""
        return _render(self.root)

    def __str__(self) -> str:
        return self.to_string()


# --------------------------------------------------------------------------------------------
# Tokenizer


class _Kind(Enum):
    WORD = "name"
    NUMBER = "number"
    ATTRIBUTE = "attribute"
    VALUE = "value"
    EQUALS = "`=`"
    PLUS = "`+`"
    STAR = "`*`"
    LPAREN = "`(`"
    RPAREN = "`)`"
    COMMA = "`,`"
    PIPE = "`|`"
    AMP = "`&`"
    MINUS = "`-`"
    AND = "`and`"
    OR = "`or`"
    NOT = "`not`"
    END = "the end of the selection"


_PUNCTUATION: Final = {
    "(": _Kind.LPAREN,
    ")": _Kind.RPAREN,
    ",": _Kind.COMMA,
    "|": _Kind.PIPE,
    "&": _Kind.AMP,
    "-": _Kind.MINUS,
    "+": _Kind.PLUS,
    "*": _Kind.STAR,
}
_KEYWORD_KINDS: Final = {"and": _Kind.AND, "or": _Kind.OR, "not": _Kind.NOT}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: _Kind
    text: str  # the decoded text: attribute name (lower case), value, word or operator
    position: int

    def describe(self) -> str:
        if self.kind in (_Kind.WORD, _Kind.NUMBER):
            return f"`{self.text}`"
        if self.kind is _Kind.ATTRIBUTE:
            return f"`{self.text}:`"
        if self.kind is _Kind.VALUE:
            return f"value `{self.text}`"
        return str(self.kind.value)


def _syntax_error(text: str, position: int, message: str) -> SelectionError:
    shown = "".join(" " if ch.isspace() else ch for ch in text)
    return SelectionError(
        f"invalid selection: {message} (column {position + 1}):\n  {shown}\n  {' ' * position}^"
    )


class _Tokenizer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[_Token] = []

    def _skip_space(self, i: int) -> int:
        while i < len(self.text) and self.text[i].isspace():
            i += 1
        return i

    def run(self) -> list[_Token]:
        text = self.text
        i = self._skip_space(0)
        while i < len(text):
            ch = text[i]
            if ch in _PUNCTUATION:
                self.tokens.append(_Token(_PUNCTUATION[ch], ch, i))
                i = self._skip_space(i + 1)
                continue
            match = _BARE_KEY.match(text, i)
            if match is None:
                self._unexpected(i)
            word = match.group()
            after = self._skip_space(match.end())
            if after < len(text) and text[after] == ":":
                i = self._attribute(word, i, after + 1)
            else:
                self._word(word, i)
                i = match.end()
            i = self._skip_space(i)
        self.tokens.append(_Token(_Kind.END, "", len(text)))
        return self.tokens

    def _word(self, word: str, position: int) -> None:
        lowered = word.lower()
        if lowered in _KEYWORD_KINDS:
            self.tokens.append(_Token(_KEYWORD_KINDS[lowered], lowered, position))
        elif word.isdigit():
            self.tokens.append(_Token(_Kind.NUMBER, word, position))
        else:
            self.tokens.append(_Token(_Kind.WORD, word, position))

    def _attribute(self, name: str, position: int, i: int) -> int:
        attribute = name.lower()
        if attribute not in _ATTRIBUTES:
            raise _syntax_error(
                self.text,
                position,
                f"unknown attribute `{name}:`; use key:, tag:, group:, owner: or kind:",
            )
        self.tokens.append(_Token(_Kind.ATTRIBUTE, attribute, position))
        i = self._value(attribute, self._skip_space(i))
        if attribute == "tag":
            after = self._skip_space(i)
            if after < len(self.text) and self.text[after] == "=":
                self.tokens.append(_Token(_Kind.EQUALS, "=", after))
                i = self._value("tag value", self._skip_space(after + 1))
        return i

    def _value(self, what: str, i: int) -> int:
        text = self.text
        if i < len(text) and text[i] == '"':
            return self._quoted(i)
        pattern = _KEY_VALUE if what == "key" else _PLAIN_VALUE
        match = pattern.match(text, i)
        if match is None:
            if what == "tag value":
                label, example = "a tag value after `=`", 'tag:name="my value"'
            else:
                label, example = f"a value after `{what}:`", f'{what}:"my value"'
            found = f"`{text[i]}`" if i < len(text) else "the end of the selection"
            raise _syntax_error(
                text,
                i,
                f"expected {label} but found {found}; quote values with other characters, "
                f"e.g. {example}",
            )
        self.tokens.append(_Token(_Kind.VALUE, match.group(), i))
        return match.end()

    def _quoted(self, start: int) -> int:
        text = self.text
        chars: list[str] = []
        i = start + 1
        while i < len(text):
            ch = text[i]
            if ch == "\\":
                if i + 1 < len(text) and text[i + 1] in '"\\':
                    chars.append(text[i + 1])
                    i += 2
                    continue
                raise _syntax_error(
                    text, i, 'unknown escape in quoted value; only \\" and \\\\ are escapes'
                )
            if ch == '"':
                if not chars:
                    raise _syntax_error(text, start, "quoted value is empty")
                self.tokens.append(_Token(_Kind.VALUE, "".join(chars), start))
                return i + 1
            chars.append(ch)
            i += 1
        raise _syntax_error(text, start, 'quoted value is not closed; add a `"`')

    def _unexpected(self, i: int) -> NoReturn:
        ch = self.text[i]
        hint = ""
        if ch == "/":
            hint = (
                "; a bare name is an exact key, so for a pattern write it after key:, "
                "e.g. key:analytics/*"
            )
        elif ch == '"':
            hint = '; quoted text goes after an attribute, e.g. key:"analytics/orders"'
        elif ch in "@.":
            hint = (
                f"; `{ch}` may appear only in an attribute value such as owner:ana@example.com, "
                'and a value containing `+` must be quoted: owner:"ana+ops@example.com"'
            )
        elif ch == "=":
            hint = "; `=` only follows a tag name, e.g. tag:tier=gold"
        raise _syntax_error(self.text, i, f"unexpected character `{ch}`{hint}")


# --------------------------------------------------------------------------------------------
# Parser

_UNION_OPERATORS: Final = frozenset({_Kind.OR, _Kind.PIPE, _Kind.COMMA, _Kind.MINUS})
_INTERSECTION_OPERATORS: Final = frozenset({_Kind.AND, _Kind.AMP})
_PRIMARY_STARTS: Final = frozenset({_Kind.WORD, _Kind.NUMBER, _Kind.ATTRIBUTE, _Kind.LPAREN})


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _Tokenizer(text).run()
        self.index = 0
        self.nesting = 0

    def _current(self) -> _Token:
        # A method, not a property: the token changes as parsing advances, and type checkers
        # narrow attribute chains as if they could not.
        return self.tokens[self.index]

    def _peek(self, offset: int) -> _Token:
        return self.tokens[min(self.index + offset, len(self.tokens) - 1)]

    def _advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def _error(self, token: _Token, message: str) -> NoReturn:
        raise _syntax_error(self.text, token.position, message)

    def _enter(self, token: _Token) -> None:
        # Bounded so that hostile input fails with a SelectionError, not a RecursionError.
        self.nesting += 1
        if self.nesting > _MAX_NESTING:
            self._error(token, f"the selection is nested more than {_MAX_NESTING} levels deep")

    def parse(self) -> Selection:
        if self._current().kind is _Kind.END:
            raise SelectionError(
                "the selection is empty; write an asset key such as `orders`, `*` for every "
                "asset, or an attribute filter such as `group:raw`"
            )
        root = self._expression()
        if self._current().kind is not _Kind.END:
            if self._current().kind is _Kind.RPAREN:
                self._error(self._current(), "`)` has no matching `(`")
            hint = ""
            previous = self.tokens[self.index - 1]
            if previous.kind is _Kind.WORD and previous.text.endswith("-"):
                hint = (
                    f"; `-` right after a name is part of the name (`{previous.text}`), "
                    "so put a space before `-` to exclude"
                )
            self._error(
                self._current(),
                "expected an operator (`and`, `or`, `-`, `,`, `|` or `&`) "
                f"before {self._current().describe()}{hint}",
            )
        return Selection(root)

    def _expression(self) -> SelectionNode:
        result = self._intersection()
        # Consecutive operators of one kind become one n-ary node, so that long comma lists
        # stay flat; switching between union and exclusion closes the group (left to right).
        group_kind: Literal["union", "difference"] | None = None
        group: list[SelectionNode] = []
        while self._current().kind in _UNION_OPERATORS:
            kind: Literal["union", "difference"] = (
                "difference" if self._advance().kind is _Kind.MINUS else "union"
            )
            operand = self._intersection()
            if kind != group_kind:
                result = _close_group(group_kind, result, group)
                group_kind, group = kind, []
            group.append(operand)
        return _close_group(group_kind, result, group)

    def _intersection(self) -> SelectionNode:
        first = self._unary()
        operands = [first]
        while self._current().kind in _INTERSECTION_OPERATORS:
            self._advance()
            operands.append(self._unary())
        return first if len(operands) == 1 else Intersection(tuple(operands))

    def _unary(self) -> SelectionNode:
        if self._current().kind is _Kind.NOT:
            self._enter(self._advance())
            operand = self._unary()
            self.nesting -= 1
            return Complement(operand)
        return self._traversal()

    def _traversal(self) -> SelectionNode:
        start = self._current()
        upstream: int | None = 0
        if start.kind is _Kind.STAR and self._peek(1).kind in _PRIMARY_STARTS:
            self._advance()
            upstream = None
        elif start.kind is _Kind.PLUS:
            self._advance()
            upstream = 1
        elif (
            start.kind is _Kind.NUMBER
            and self._peek(1).kind is _Kind.PLUS
            and self._peek(2).kind in _PRIMARY_STARTS
        ):
            upstream = self._depth(self._advance())
            self._advance()

        operand, bare_all = self._primary()

        downstream: int | None = 0
        marker = self._current()
        if marker.kind is _Kind.STAR:
            self._advance()
            downstream = None
        elif marker.kind is _Kind.PLUS:
            self._advance()
            downstream = self._depth(self._advance()) if self._current().kind is _Kind.NUMBER else 1

        if upstream == 0 and downstream == 0:
            return operand
        if bare_all:
            self._error(
                start if upstream != 0 else marker,
                "`*` alone already selects every asset; it takes no `+` or `*` markers",
            )
        return Traversal(operand, upstream, downstream)

    def _depth(self, token: _Token) -> int:
        if len(token.text) > _MAX_DEPTH_DIGITS:
            self._error(token, f"depth `{token.text}` is too large; use `*` for every level")
        depth = int(token.text)
        if depth == 0:
            self._error(token, "a depth must be at least 1; leave out the `+` for none")
        return depth

    def _primary(self) -> tuple[SelectionNode, bool]:
        token = self._current()
        if token.kind is _Kind.LPAREN:
            self._enter(self._advance())
            if self._current().kind is _Kind.RPAREN:
                self._error(self._current(), "`()` is empty; put a selection inside")
            inner = self._expression()
            if self._current().kind is not _Kind.RPAREN:
                self._error(
                    self._current(),
                    f"expected `)` to close the `(` at column {token.position + 1} "
                    f"but found {self._current().describe()}",
                )
            self._advance()
            self.nesting -= 1
            return inner, False
        if token.kind is _Kind.STAR:
            self._advance()
            return AllAssets(), True
        if token.kind in (_Kind.WORD, _Kind.NUMBER):
            self._advance()
            return ExactKey(self._key(token.text, token)), False
        if token.kind is _Kind.ATTRIBUTE:
            self._advance()
            return self._attribute(token.text), False
        self._error(
            token,
            "expected an asset key, an attribute filter (key:, tag:, group:, owner:, kind:), "
            f"`*` or `(` but found {token.describe()}",
        )

    def _key(self, text: str, token: _Token) -> AssetKey:
        try:
            return AssetKey.parse(text)
        except DefinitionError as exc:
            self._error(token, f"`{text}` is not a valid asset key: {exc}")

    def _attribute(self, attribute: str) -> SelectionNode:
        value = self._advance()  # the tokenizer always emits a value after an attribute
        if attribute == "key":
            if "*" in value.text:
                if not _KEY_PATTERN_CHARS.fullmatch(value.text):
                    self._error(
                        value,
                        f"key pattern `{value.text}` can never match: asset keys contain only "
                        "letters, digits, '_', '-' and '/'",
                    )
                return KeyGlob(value.text)
            return ExactKey(self._key(value.text, value))
        if attribute == "tag":
            tag_value: str | None = None
            if self._current().kind is _Kind.EQUALS:
                self._advance()
                tag_value = self._advance().text
            return TagFilter(value.text, tag_value)
        if attribute == "group":
            return GroupFilter(value.text)
        if attribute == "owner":
            return OwnerFilter(value.text)
        return KindFilter(value.text)


def _close_group(
    kind: Literal["union", "difference"] | None,
    result: SelectionNode,
    group: list[SelectionNode],
) -> SelectionNode:
    if kind is None:
        return result
    if kind == "union":
        return Union((result, *group))
    return Difference(result, tuple(group))


def parse_selection(text: str) -> Selection:
    """Parse a selection expression; raises :class:`SelectionError` pointing at the problem."""
    if not isinstance(text, str):
        raise SelectionError(f"a selection must be text, got {type(text).__name__}")
    return _Parser(text).parse()


# --------------------------------------------------------------------------------------------
# Canonical text

_LEVEL_UNION: Final = 1
_LEVEL_INTERSECTION: Final = 2
_LEVEL_UNARY: Final = 3
_LEVEL_PRIMARY: Final = 4


def _level(node: SelectionNode) -> int:
    if isinstance(node, Union | Difference):
        return _LEVEL_UNION
    if isinstance(node, Intersection):
        return _LEVEL_INTERSECTION
    if isinstance(node, Complement | Traversal):
        return _LEVEL_UNARY
    return _LEVEL_PRIMARY


def _wrap(node: SelectionNode, parenthesise: bool) -> str:
    text = _render(node)
    return f"({text})" if parenthesise else text


def _value_text(value: str, plain: re.Pattern[str]) -> str:
    if plain.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _key_text(key: AssetKey) -> str:
    text = key.to_string()
    # Digits-only names would read as depths next to `+`, keywords as operators.
    if text.isdigit() or text.lower() in _KEYWORDS:
        return f"key:{text}"
    return text


def _render(node: SelectionNode) -> str:
    if isinstance(node, AllAssets):
        return "*"
    if isinstance(node, ExactKey):
        return _key_text(node.key)
    if isinstance(node, KeyGlob):
        return f"key:{_value_text(node.pattern, _KEY_VALUE)}"
    if isinstance(node, TagFilter):
        text = f"tag:{_value_text(node.name, _PLAIN_VALUE)}"
        if node.value is not None:
            text += f"={_value_text(node.value, _PLAIN_VALUE)}"
        return text
    if isinstance(node, GroupFilter):
        return f"group:{_value_text(node.group, _PLAIN_VALUE)}"
    if isinstance(node, OwnerFilter):
        return f"owner:{_value_text(node.owner, _PLAIN_VALUE)}"
    if isinstance(node, KindFilter):
        return f"kind:{_value_text(node.kind, _PLAIN_VALUE)}"
    if isinstance(node, Traversal):
        return _render_traversal(node)
    if isinstance(node, Complement):
        return "not " + _wrap(node.operand, _level(node.operand) < _LEVEL_UNARY)
    if isinstance(node, Intersection):
        return " and ".join(
            _wrap(operand, _level(operand) <= _LEVEL_INTERSECTION) for operand in node.operands
        )
    if isinstance(node, Union):
        # A leading difference reads back as the first operand (`a - b or c`); a leading union
        # would be merged into this one, so it keeps its parentheses.
        parts = [_wrap(node.operands[0], isinstance(node.operands[0], Union))]
        parts += [_wrap(op, _level(op) <= _LEVEL_UNION) for op in node.operands[1:]]
        return " or ".join(parts)
    if isinstance(node, Difference):
        parts = [_wrap(node.base, isinstance(node.base, Difference))]
        parts += [_wrap(op, _level(op) <= _LEVEL_UNION) for op in node.removed]
        return " - ".join(parts)
    assert_never(node)


def _render_traversal(node: Traversal) -> str:
    up = node.upstream
    down = node.downstream
    prefix = "*" if up is None else "" if up == 0 else "+" if up == 1 else f"{up}+"
    suffix = "*" if down is None else "" if down == 0 else "+" if down == 1 else f"+{down}"
    operand = node.operand
    inner = _render(operand)
    parenthesise = not isinstance(operand, _ATOMS) or isinstance(operand, AllAssets)
    # An unquoted `key:` value would swallow a trailing `*` as a wildcard.
    if down is None and inner.startswith("key:") and not inner.endswith('"'):
        parenthesise = True
    if parenthesise:
        inner = f"({inner})"
    return f"{prefix}{inner}{suffix}"


# --------------------------------------------------------------------------------------------
# Resolution


class _Index:
    """Attribute values of a graph, computed once per resolution."""

    def __init__(self, graph: AssetGraph) -> None:
        self.graph = graph
        self.all: frozenset[AssetKey] = frozenset(graph.nodes)
        self.tags: dict[str, dict[str, set[AssetKey]]] = {}
        self.groups: dict[str, set[AssetKey]] = {}
        self.owners: dict[str, set[AssetKey]] = {}
        self.kinds: dict[str, set[AssetKey]] = {}
        for key, node in graph.nodes.items():
            for name, value in node.tags.items():
                self.tags.setdefault(name, {}).setdefault(value, set()).add(key)
            self.groups.setdefault(node.group, set()).add(key)
            for owner in node.owners:
                self.owners.setdefault(owner, set()).add(key)
            for kind in node.kinds:
                self.kinds.setdefault(kind, set()).add(key)


def _children(node: SelectionNode) -> tuple[SelectionNode, ...]:
    if isinstance(node, Traversal | Complement):
        return (node.operand,)
    if isinstance(node, Intersection | Union):
        return node.operands
    if isinstance(node, Difference):
        return (node.base, *node.removed)
    return ()


def _leaves(root: SelectionNode) -> Iterator[SelectionNode]:
    stack = [root]
    while stack:
        node = stack.pop()
        children = _children(node)
        if children:
            stack.extend(reversed(children))
        else:
            yield node


def _quote_list(names: Sequence[str]) -> str:
    quoted = [f"`{n}`" for n in names]
    if len(quoted) == 1:
        return quoted[0]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _close_matches(wanted: str, candidates: Sequence[str]) -> list[str]:
    same_case = [c for c in candidates if c.lower() == wanted.lower() and c != wanted]
    close = difflib.get_close_matches(wanted, candidates, n=3, cutoff=0.6)
    return list(dict.fromkeys([*same_case, *close]))[:3]


def _did_you_mean(matches: Sequence[str]) -> str:
    return f"; did you mean {_quote_list(matches)}?" if matches else ""


def _unknown(subject: str, wanted: str, existing: Sequence[str], plural: str) -> str:
    """``subject``, close matches of ``wanted`` among ``existing``, then what exists."""
    text = subject + _did_you_mean(_close_matches(wanted, existing))
    if not existing:
        return f"{text}; no asset has any {plural}"
    separator = " " if text.endswith("?") else ". "
    shown = ", ".join(existing[:_MAX_LISTED])
    more = f" and {len(existing) - _MAX_LISTED} more" if len(existing) > _MAX_LISTED else ""
    return f"{text}{separator}{plural[0].upper()}{plural[1:]} in use: {shown}{more}"


def _suggest_keys(wanted: str, graph: AssetGraph) -> list[str]:
    all_keys = sorted(graph.nodes)
    texts = [k.to_string() for k in all_keys]
    last = wanted.rsplit("/", 1)[-1]
    # People often type the last component of a longer key, which difflib scores low.
    same_name = [k.to_string() for k in all_keys if k.name.lower() == last.lower()]
    by_key = _close_matches(wanted, texts)
    names = sorted({k.name for k in all_keys})
    close_names = set(difflib.get_close_matches(last, names, n=3, cutoff=0.75))
    by_name = [k.to_string() for k in all_keys if k.name in close_names]
    found = [k for k in dict.fromkeys([*same_name, *by_key, *by_name]) if k != wanted]
    return found[:3]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


def _problem(node: SelectionNode, index: _Index) -> str | None:
    graph = index.graph
    if isinstance(node, ExactKey):
        if node.key in graph:
            return None
        wanted = node.key.to_string()
        matches = _suggest_keys(wanted, graph)
        if matches:
            return f"asset `{wanted}` does not exist{_did_you_mean(matches)}"
        return f"asset `{wanted}` does not exist, and no asset has a similar key"
    if isinstance(node, KeyGlob):
        regex = _glob_regex(node.pattern)
        if any(regex.fullmatch(k.to_string()) for k in graph.nodes):
            return None
        return (
            f"no asset key matches the pattern `key:{node.pattern}` "
            "(`*` matches any characters, including `/`)"
        )
    if isinstance(node, TagFilter):
        values = index.tags.get(node.name)
        if values is None:
            return _unknown(
                f"no asset has the tag `{node.name}`", node.name, sorted(index.tags), "tags"
            )
        if node.value is None or node.value in values:
            return None
        return _unknown(
            f"no asset has the tag `{node.name}` with value `{node.value}`",
            node.value,
            sorted(values),
            f"values of `{node.name}`",
        )
    if isinstance(node, GroupFilter):
        return _named_problem(node.group, index.groups, "group `{}` does not exist", "groups")
    if isinstance(node, OwnerFilter):
        return _named_problem(node.owner, index.owners, "no asset is owned by `{}`", "owners")
    if isinstance(node, KindFilter):
        return _named_problem(node.kind, index.kinds, "no asset has the kind `{}`", "kinds")
    return None


def _named_problem(
    wanted: str, existing: dict[str, set[AssetKey]], template: str, plural: str
) -> str | None:
    if wanted in existing:
        return None
    return _unknown(template.format(wanted), wanted, sorted(existing), plural)


def _check_names(root: SelectionNode, index: _Index) -> None:
    problems = list(
        dict.fromkeys(p for leaf in _leaves(root) if (p := _problem(leaf, index)) is not None)
    )
    if len(problems) == 1:
        raise SelectionError(problems[0])
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise SelectionError(f"the selection names {len(problems)} unknown things:\n{lines}")


def _evaluate(node: SelectionNode, index: _Index) -> frozenset[AssetKey]:
    graph = index.graph
    if isinstance(node, AllAssets):
        return index.all
    if isinstance(node, ExactKey):
        return frozenset({node.key})
    if isinstance(node, KeyGlob):
        regex = _glob_regex(node.pattern)
        return frozenset(k for k in graph.nodes if regex.fullmatch(k.to_string()))
    if isinstance(node, TagFilter):
        values = index.tags[node.name]
        if node.value is not None:
            return frozenset(values[node.value])
        return frozenset().union(*values.values())
    if isinstance(node, GroupFilter):
        return frozenset(index.groups[node.group])
    if isinstance(node, OwnerFilter):
        return frozenset(index.owners[node.owner])
    if isinstance(node, KindFilter):
        return frozenset(index.kinds[node.kind])
    if isinstance(node, Traversal):
        base = _evaluate(node.operand, index)
        result: set[AssetKey] = set(base)
        if node.upstream != 0:
            result |= graph.upstream_closure(base, node.upstream)
        if node.downstream != 0:
            result |= graph.downstream_closure(base, node.downstream)
        return frozenset(result)
    if isinstance(node, Complement):
        return index.all - _evaluate(node.operand, index)
    if isinstance(node, Intersection):
        first, *rest = node.operands
        found = _evaluate(first, index)
        for operand in rest:
            found &= _evaluate(operand, index)
        return found
    if isinstance(node, Union):
        return frozenset().union(*(_evaluate(op, index) for op in node.operands))
    if isinstance(node, Difference):
        remaining = _evaluate(node.base, index)
        for operand in node.removed:
            remaining -= _evaluate(operand, index)
        return remaining
    assert_never(node)


def resolve_selection(selection: Selection | str, graph: AssetGraph) -> frozenset[AssetKey]:
    """The keys of ``graph`` that ``selection`` selects.

    Every key, tag, group, owner and kind the selection names must exist in ``graph``;
    otherwise a :class:`SelectionError` lists each unknown name with close matches. A
    selection that names only existing things but selects nothing (``a and not a``) returns an
    empty set.
    """
    parsed = parse_selection(selection) if isinstance(selection, str) else selection
    index = _Index(graph)
    _check_names(parsed.root, index)
    return _evaluate(parsed.root, index)

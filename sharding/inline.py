"""A small, safe expression language for INLINE sharding and data-node expressions.

Templates are text with ``${...}`` (or ``$->{...}``) segments, e.g. ``t_order_${order_id % 2}``.
A segment holds an expression over column variables and literals; nothing is ever handed to
Python's eval, so a config file cannot run code.

Expression semantics (deliberately fixed and documented, because shard names depend on them):

* integers are Python ints (unbounded); decimal literals are not supported;
* ``/`` on integers is FLOOR division and ``%`` is the matching FLOORED modulo (Python
  semantics), so ``a == (a / b) * b + a % b`` always holds and ``x % n`` is never negative for
  a positive ``n``; a negative key therefore still lands in an existing shard. (Groovy's ``/``
  would produce a fraction, which can never name a table.) Division by zero is an error;
* ``-``, ``*``, ``/``, ``%`` and unary minus need integers; a string operand is accepted when
  it is integer text (``'17'``), because drivers often send numeric keys as text;
* ``+`` adds when both operands are numeric (an int, or an int and integer text); otherwise,
  if either operand is a string, it concatenates their text (``'t_' + 1`` gives ``t_1``);
* functions: ``abs(x)``, ``hash_mod(x, n)`` (CRC32-based, see ``stable_hash``), ``str(x)``,
  ``substr(s, start[, length])`` with a 0-based ``start``, ``lower(s)``, ``upper(s)``, ``int(x)``.

Data-node expressions (``expand_nodes``) may also use ``${a..b}`` integer ranges and
``${[x, y]}`` lists; several segments expand to their cartesian product and top-level commas
separate independent expressions.
"""

from __future__ import annotations

import datetime as dt
import itertools
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

Value = int | str

# Guard rails: a typo such as ${0..10000000} must fail loudly rather than eat memory.
MAX_EXPANSION = 100_000


class InlineError(ValueError):
    """A syntax or evaluation error; ``position`` is the offset in ``source`` (or None)."""

    def __init__(self, message: str, source: str = "", position: int | None = None):
        where = ""
        if position is not None:
            where = f" at position {position}"
        if source:
            where += f" in {source!r}"
        super().__init__(message + where)
        self.reason = message
        self.source = source
        self.position = position


# ---------------------------------------------------------------------------------------
# Canonical text and the stable hash shared by hash_mod() and the HASH_MOD algorithm.


def canonical_bytes(value: object) -> bytes:
    """The bytes a value is hashed as; identical on every host, process and Python version.

    ints (and integral Decimals/floats) hash as their decimal text, other Decimals as plain
    fixed-point text without trailing zeros, strings as UTF-8, bytes raw, dates and times as
    ISO text (datetimes with a space separator, as MySQL prints them).
    """
    if value is None:
        raise TypeError("cannot hash NULL")
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise TypeError(f"cannot hash {value!r}")
        value = Decimal(repr(value))
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise TypeError(f"cannot hash {value!r}")
        if value == value.to_integral_value():
            return str(int(value)).encode()
        return format(value.normalize(), "f").encode()
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ").encode()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat().encode()
    raise TypeError(f"cannot hash a {type(value).__name__}")


def stable_hash(value: object) -> int:
    """CRC32 (unsigned) of ``canonical_bytes(value)``; never Python's randomised hash()."""
    return zlib.crc32(canonical_bytes(value))


def normalise_variable(value: object) -> Value:
    """Turn a column value into the int-or-str the expression language works on."""
    if value is None:
        raise TypeError("sharding column value is NULL")
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float | Decimal):
        if isinstance(value, float):
            value = Decimal(repr(value))
        if value.is_finite() and value == value.to_integral_value():
            return int(value)
        return canonical_bytes(value).decode()
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TypeError("binary value is not UTF-8 text") from exc
    if isinstance(value, dt.date | dt.time):
        return canonical_bytes(value).decode()
    raise TypeError(f"unsupported value type {type(value).__name__}")


# ---------------------------------------------------------------------------------------
# Tokens


@dataclass(frozen=True)
class _Token:
    kind: str  # "int", "str", "name", "op", "end" ('}'), "eof"
    text: str
    value: Any
    pos: int


_OPERATORS = ("..", "+", "-", "*", "/", "%", "(", ")", ",", "[", "]")
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", "'": "'", '"': '"', "$": "$"}


def _tokenize(source: str, start: int, in_segment: bool) -> tuple[list[_Token], int]:
    """Tokens from ``start``; in a segment, stop after the closing '}' and return its end."""
    tokens: list[_Token] = []
    i, n = start, len(source)
    while i < n:
        c = source[i]
        if c.isspace():
            i += 1
            continue
        if c == "}" and in_segment:
            tokens.append(_Token("end", "}", None, i))
            return tokens, i + 1
        if c.isdigit():
            j = i
            while j < n and source[j].isdigit():
                j += 1
            if j + 1 < n and source[j] == "." and source[j + 1].isdigit():
                raise InlineError("decimal literals are not supported", source, i)
            tokens.append(_Token("int", source[i:j], int(source[i:j]), i))
            i = j
            continue
        if c.isalpha() or c == "_":
            j = i
            while j < n and (source[j].isalnum() or source[j] == "_"):
                j += 1
            tokens.append(_Token("name", source[i:j], source[i:j], i))
            i = j
            continue
        if c in "'\"":
            j, chars = i + 1, []
            while True:
                if j >= n:
                    raise InlineError("unterminated string literal", source, i)
                ch = source[j]
                if ch == c:
                    break
                if ch == "\\":
                    if j + 1 >= n or source[j + 1] not in _ESCAPES:
                        raise InlineError("unknown escape in string literal", source, j)
                    chars.append(_ESCAPES[source[j + 1]])
                    j += 2
                    continue
                chars.append(ch)
                j += 1
            tokens.append(_Token("str", source[i:j + 1], "".join(chars), i))
            i = j + 1
            continue
        op = next((o for o in _OPERATORS if source.startswith(o, i)), None)
        if op is None:
            raise InlineError(f"unexpected character {c!r}", source, i)
        tokens.append(_Token("op", op, op, i))
        i += len(op)
    if in_segment:
        raise InlineError("unterminated '${' (missing '}')", source, start)
    tokens.append(_Token("eof", "", None, n))
    return tokens, n


# ---------------------------------------------------------------------------------------
# AST


@dataclass(frozen=True)
class Literal:
    value: Value
    pos: int


@dataclass(frozen=True)
class Variable:
    name: str
    pos: int


@dataclass(frozen=True)
class Unary:
    op: str
    operand: Node
    pos: int


@dataclass(frozen=True)
class Binary:
    op: str
    left: Node
    right: Node
    pos: int


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Node, ...]
    pos: int


@dataclass(frozen=True)
class SequenceNode:
    """A list literal or an a..b range; only meaningful in data-node expressions."""
    items: tuple[Node, ...] = ()
    low: Node | None = None
    high: Node | None = None
    pos: int = 0


Node = Literal | Variable | Unary | Binary | Call | SequenceNode

# name -> (min args, max args)
_FUNCTIONS: dict[str, tuple[int, int]] = {
    "abs": (1, 1), "hash_mod": (2, 2), "str": (1, 1), "substr": (2, 3),
    "lower": (1, 1), "upper": (1, 1), "int": (1, 1),
}


class _Parser:
    """Recursive descent over one segment's tokens.

    expr := term (('+'|'-') term)*      term := unary (('*'|'/'|'%') unary)*
    unary := '-' unary | '+' unary | primary
    primary := INT | STR | NAME | NAME '(' args ')' | '(' expr ')'
    In node mode a segment may instead be '[' expr (',' expr)* ']' or expr '..' expr.
    """

    def __init__(self, source: str, tokens: list[_Token]):
        self.source = source
        self.tokens = tokens
        self.i = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def error(self, message: str, tok: _Token | None = None) -> InlineError:
        tok = tok or self.peek()
        return InlineError(message, self.source, tok.pos)

    def expect_op(self, op: str) -> _Token:
        tok = self.peek()
        if tok.kind != "op" or tok.text != op:
            raise self.error(f"expected {op!r}, found {self._describe(tok)}")
        return self.take()

    @staticmethod
    def _describe(tok: _Token) -> str:
        if tok.kind == "eof":
            return "end of expression"
        if tok.kind == "end":
            return "'}'"
        return repr(tok.text)

    def segment(self, allow_sequences: bool) -> Node:
        first = self.peek()
        if allow_sequences and first.kind == "op" and first.text == "[":
            self.take()
            items = [self.expr()]
            while self.peek().kind == "op" and self.peek().text == ",":
                self.take()
                items.append(self.expr())
            self.expect_op("]")
            node: Node = SequenceNode(items=tuple(items), pos=first.pos)
        else:
            node = self.expr()
            if self.peek().kind == "op" and self.peek().text == "..":
                if not allow_sequences:
                    raise self.error("ranges (a..b) are only allowed in data-node expressions")
                self.take()
                node = SequenceNode(low=node, high=self.expr(), pos=first.pos)
        tail = self.peek()
        if tail.kind not in ("end", "eof"):
            raise self.error(f"unexpected {self._describe(tail)}")
        return node

    def expr(self) -> Node:
        node = self.term()
        while self.peek().kind == "op" and self.peek().text in ("+", "-"):
            tok = self.take()
            node = Binary(tok.text, node, self.term(), tok.pos)
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.peek().kind == "op" and self.peek().text in ("*", "/", "%"):
            tok = self.take()
            node = Binary(tok.text, node, self.unary(), tok.pos)
        return node

    def unary(self) -> Node:
        tok = self.peek()
        if tok.kind == "op" and tok.text in ("-", "+"):
            self.take()
            operand = self.unary()
            return operand if tok.text == "+" else Unary("-", operand, tok.pos)
        return self.primary()

    def primary(self) -> Node:
        tok = self.take()
        if tok.kind == "int" or tok.kind == "str":
            return Literal(tok.value, tok.pos)
        if tok.kind == "name":
            nxt = self.peek()
            if nxt.kind == "op" and nxt.text == "(":
                return self.call(tok)
            return Variable(tok.text, tok.pos)
        if tok.kind == "op" and tok.text == "(":
            node = self.expr()
            self.expect_op(")")
            return node
        raise self.error(f"expected a value, found {self._describe(tok)}", tok)

    def call(self, name_tok: _Token) -> Node:
        arity = _FUNCTIONS.get(name_tok.text)
        if arity is None:
            raise self.error(f"unknown function {name_tok.text!r}; known: {sorted(_FUNCTIONS)}", name_tok)
        self.expect_op("(")
        args: list[Node] = []
        if not (self.peek().kind == "op" and self.peek().text == ")"):
            args.append(self.expr())
            while self.peek().kind == "op" and self.peek().text == ",":
                self.take()
                args.append(self.expr())
        self.expect_op(")")
        low, high = arity
        if not low <= len(args) <= high:
            want = str(low) if low == high else f"{low} to {high}"
            raise self.error(f"{name_tok.text}() takes {want} arguments, got {len(args)}", name_tok)
        return Call(name_tok.text, tuple(args), name_tok.pos)


def _variables(node: Node) -> set[str]:
    if isinstance(node, Variable):
        return {node.name}
    if isinstance(node, Unary):
        return _variables(node.operand)
    if isinstance(node, Binary):
        return _variables(node.left) | _variables(node.right)
    if isinstance(node, Call):
        return set().union(*(_variables(a) for a in node.args)) if node.args else set()
    if isinstance(node, SequenceNode):
        parts = [*node.items, *(x for x in (node.low, node.high) if x is not None)]
        return set().union(*(_variables(p) for p in parts)) if parts else set()
    return set()


def _confined(node: Node, confined: bool) -> bool:
    """Whether every variable under ``node`` only reaches the output through integers.

    Inside -, *, /, %, unary minus, abs(), int() and hash_mod() a value must be (or become)
    an integer, so sampling integer values covers every output; a variable whose text flows
    out directly (plain interpolation, '+', str(), lower(), ...) may be a string column.
    """
    if isinstance(node, Variable):
        return confined
    if isinstance(node, Unary):
        return _confined(node.operand, True)
    if isinstance(node, Binary):
        inner = confined if node.op == "+" else True
        return _confined(node.left, inner) and _confined(node.right, inner)
    if isinstance(node, Call):
        if node.name in ("abs", "int", "hash_mod"):
            return all(_confined(a, True) for a in node.args)
        if node.name == "substr":
            return _confined(node.args[0], confined) and all(_confined(a, True) for a in node.args[1:])
        return all(_confined(a, confined) for a in node.args)
    return True


# ---------------------------------------------------------------------------------------
# Evaluation


def _is_int_text(value: str) -> bool:
    text = value.strip()
    if text[:1] in "+-":
        text = text[1:]
    return text.isascii() and text.isdigit()


def _numeric_pair(left: Value, right: Value) -> bool:
    """'+' adds when both sides are ints, or one is an int and the other integer text."""
    if isinstance(left, int) and isinstance(right, int):
        return True
    if isinstance(left, int):
        return _is_int_text(right)  # type: ignore[arg-type]
    if isinstance(right, int):
        return _is_int_text(left)
    return False


class _Evaluator:
    def __init__(self, source: str, env: Mapping[str, Value]):
        self.source = source
        self.env = env

    def fail(self, message: str, pos: int) -> InlineError:
        return InlineError(message, self.source, pos)

    def as_int(self, value: Value, pos: int, what: str) -> int:
        if isinstance(value, int):
            return value
        if _is_int_text(value):
            return int(value.strip())
        raise self.fail(f"{what} needs an integer, got {value!r}", pos)

    def as_text(self, value: Value) -> str:
        return str(value)

    def eval(self, node: Node) -> Value:
        if isinstance(node, Literal):
            return node.value
        if isinstance(node, Variable):
            if node.name not in self.env:
                known = ", ".join(sorted(self.env)) or "none"
                raise self.fail(f"unknown variable {node.name!r} (known: {known})", node.pos)
            return self.env[node.name]
        if isinstance(node, Unary):
            return -self.as_int(self.eval(node.operand), node.pos, "unary '-'")
        if isinstance(node, Binary):
            return self.binary(node)
        if isinstance(node, Call):
            return self.call(node)
        raise self.fail("a list or range is only allowed in data-node expressions", node.pos)

    def binary(self, node: Binary) -> Value:
        left, right = self.eval(node.left), self.eval(node.right)
        if node.op == "+":
            if _numeric_pair(left, right):
                return self.as_int(left, node.pos, "'+'") + self.as_int(right, node.pos, "'+'")
            return self.as_text(left) + self.as_text(right)
        a = self.as_int(left, node.pos, f"{node.op!r}")
        b = self.as_int(right, node.pos, f"{node.op!r}")
        if node.op == "-":
            return a - b
        if node.op == "*":
            return a * b
        if b == 0:
            raise self.fail("division by zero", node.pos)
        return a // b if node.op == "/" else a % b

    def call(self, node: Call) -> Value:
        args = [self.eval(a) for a in node.args]
        name = node.name
        if name == "abs":
            return abs(self.as_int(args[0], node.pos, "abs()"))
        if name == "int":
            return self.as_int(args[0], node.pos, "int()")
        if name == "str":
            return self.as_text(args[0])
        if name == "lower":
            return self.as_text(args[0]).lower()
        if name == "upper":
            return self.as_text(args[0]).upper()
        if name == "hash_mod":
            n = self.as_int(args[1], node.pos, "hash_mod()")
            if n <= 0:
                raise self.fail(f"hash_mod() needs a positive modulus, got {n}", node.pos)
            return stable_hash(args[0]) % n
        # substr
        text = self.as_text(args[0])
        start = self.as_int(args[1], node.pos, "substr()")
        if start < 0:
            raise self.fail(f"substr() start must be >= 0, got {start}", node.pos)
        if len(args) == 2:
            return text[start:]
        length = self.as_int(args[2], node.pos, "substr()")
        if length < 0:
            raise self.fail(f"substr() length must be >= 0, got {length}", node.pos)
        return text[start:start + length]

    def values(self, node: Node) -> list[Value]:
        """All values of a data-node segment (a scalar is a one-element list)."""
        if not isinstance(node, SequenceNode):
            return [self.eval(node)]
        if node.low is None or node.high is None:
            return [self.eval(item) for item in node.items]
        low = self.as_int(self.eval(node.low), node.pos, "a range")
        high = self.as_int(self.eval(node.high), node.pos, "a range")
        if abs(high - low) >= MAX_EXPANSION:
            raise self.fail(f"range {low}..{high} is larger than {MAX_EXPANSION}", node.pos)
        step = 1 if high >= low else -1
        return list(range(low, high + step, step))


# ---------------------------------------------------------------------------------------
# Public API


@dataclass(frozen=True)
class Expression:
    """One parsed expression, evaluated against a mapping of column values."""

    source: str
    node: Node

    @property
    def variables(self) -> frozenset[str]:
        return frozenset(_variables(self.node))

    def evaluate(self, env: Mapping[str, object]) -> Value:
        return _Evaluator(self.source, _normalise_env(env, self.source)).eval(self.node)


@dataclass(frozen=True)
class Template:
    """Literal text interleaved with ``${...}`` segments."""

    source: str
    parts: tuple[str | Node, ...]

    @property
    def variables(self) -> frozenset[str]:
        names: set[str] = set()
        for part in self.parts:
            if not isinstance(part, str):
                names |= _variables(part)
        return frozenset(names)

    @property
    def integer_confined(self) -> bool:
        """True if integer samples exercise every output (see ``_confined``)."""
        return all(isinstance(p, str) or _confined(p, False) for p in self.parts)

    @property
    def is_constant(self) -> bool:
        return all(isinstance(p, str) for p in self.parts)

    def render(self, env: Mapping[str, object]) -> str:
        ev = _Evaluator(self.source, _normalise_env(env, self.source))
        return "".join(p if isinstance(p, str) else str(ev.eval(p)) for p in self.parts)

    def expand(self) -> list[str]:
        """Every string the template denotes (lists and ranges expanded, cartesian product)."""
        ev = _Evaluator(self.source, {})
        choices: list[list[str]] = []
        total = 1
        for part in self.parts:
            options = [part] if isinstance(part, str) else [str(v) for v in ev.values(part)]
            total *= len(options)
            if total > MAX_EXPANSION:
                raise InlineError(f"expands to more than {MAX_EXPANSION} names", self.source)
            choices.append(options)
        return ["".join(combo) for combo in itertools.product(*choices)]


def _normalise_env(env: Mapping[str, object], source: str) -> dict[str, Value]:
    result: dict[str, Value] = {}
    for name, value in env.items():
        try:
            result[name] = normalise_variable(value)
        except TypeError as exc:
            raise InlineError(f"variable {name!r}: {exc}", source) from exc
    return result


def _find_segment_start(source: str, i: int) -> tuple[int, int] | None:
    """(position of '$', position after the opening '{') of the next segment from i."""
    while True:
        j = source.find("$", i)
        if j < 0:
            return None
        if source.startswith("${", j):
            return j, j + 2
        if source.startswith("$->{", j):
            return j, j + 4
        i = j + 1


def _parse_template(source: str, allow_sequences: bool) -> Template:
    if not isinstance(source, str):
        raise InlineError(f"expected a string expression, got {type(source).__name__}")
    parts: list[str | Node] = []
    i = 0
    while True:
        found = _find_segment_start(source, i)
        if found is None:
            if i < len(source):
                parts.append(source[i:])
            break
        dollar, body = found
        if dollar > i:
            parts.append(source[i:dollar])
        tokens, i = _tokenize(source, body, in_segment=True)
        if tokens[0].kind == "end":
            raise InlineError("empty '${}'", source, dollar)
        parts.append(_Parser(source, tokens).segment(allow_sequences))
    return Template(source, tuple(parts))


def compile_template(source: str) -> Template:
    """Parse an algorithm expression such as ``t_order_${order_id % 2}``."""
    return _parse_template(source, allow_sequences=False)


def compile_expression(source: str) -> Expression:
    """Parse a bare expression (no ``${}``), e.g. ``order_id % 4 / 2``."""
    tokens, _ = _tokenize(source, 0, in_segment=False)
    if tokens[0].kind == "eof":
        raise InlineError("empty expression", source, 0)
    return Expression(source, _Parser(source, tokens).segment(allow_sequences=False))


def _split_top_level(source: str) -> list[tuple[int, str]]:
    """Split on commas outside ``${...}`` segments: [(offset, piece), ...]."""
    pieces: list[tuple[int, str]] = []
    start = i = 0
    while i < len(source):
        found = _find_segment_start(source, i)
        comma = source.find(",", i)
        if comma >= 0 and (found is None or comma < found[0]):
            pieces.append((start, source[start:comma]))
            start = i = comma + 1
            continue
        if found is None:
            break
        _, i = _tokenize(source, found[1], in_segment=True)
    pieces.append((start, source[start:]))
    return pieces


def expand_nodes(expression: str | list[str] | tuple[str, ...]) -> list[str]:
    """Expand a data-node expression (or a list of them) into its names, in order.

    ``ds_${0..1}.t_${[0, 1]}`` gives ``['ds_0.t_0', 'ds_0.t_1', 'ds_1.t_0', 'ds_1.t_1']``.
    Duplicates are kept so the caller can report them.
    """
    if isinstance(expression, list | tuple):
        names: list[str] = []
        for item in expression:
            names.extend(expand_nodes(item))
        return names
    if not isinstance(expression, str):
        raise InlineError(f"expected a string, got {type(expression).__name__}")
    names = []
    for offset, piece in _split_top_level(expression):
        text = piece.strip()
        if not text:
            raise InlineError("empty node expression", expression, offset)
        try:
            names.extend(_parse_template(text, allow_sequences=True).expand())
        except InlineError as exc:
            # Re-anchor the position to the full expression the operator wrote.
            shift = offset + (len(piece) - len(piece.lstrip()))
            pos = None if exc.position is None else exc.position + shift
            raise InlineError(exc.reason, expression, pos) from None
        if len(names) > MAX_EXPANSION:
            raise InlineError(f"expands to more than {MAX_EXPANSION} names", expression)
    return names


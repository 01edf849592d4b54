"""Avro bodies encoded and decoded by Python code generated once per schema.

fastavro walks the schema for every record: each field is a dictionary lookup and a comparison of type names, and
each union value is validated against its branches in turn. For the small records on Lineguard's topics that walk
costs more than the bytes themselves (10-12 us per record to decode or encode a reading or an observation; the
generated code takes 5-7, see the normalizer README). `compile_codec` turns a schema into two straight-line
functions instead, one statement per field, so the per-record cost is only the work of the encoding.

The output is the same bytes fastavro writes and the same dictionaries it reads, for every record that fits the
schema (tests compare the two on generated records of every topic). A record that does not fit raises, as
fastavro does; the caller turns that into its own error. Supported: every Avro type except logical types, unions
whose branches a Python value cannot tell apart (two record or map branches, `float` beside `double`) and arrays
or maps of values that take no bytes: for those `compile_codec` returns None and the caller keeps fastavro.
Decoding is for a record read with the schema it was written with; reading an older writer schema (resolution)
stays with fastavro.
"""

from __future__ import annotations

import array
import numbers
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1
INT_MIN, INT_MAX = -(1 << 31), (1 << 31) - 1
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
_MAX_VARINT_SHIFT = 63  # a long takes at most 10 bytes; more is corrupt (and would be slow to accumulate)


class Unsupported(Exception):
    """The schema uses something the generated code does not cover: keep fastavro for it."""


def write_long(out: bytearray, n: int) -> None:
    """Zig-zag varint, as Avro writes int and long."""
    if not LONG_MIN <= n <= LONG_MAX:
        raise OverflowError(f"{n} does not fit a 64-bit long")
    n = (n << 1) ^ (n >> 63)
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def write_int(out: bytearray, n: int) -> None:
    if not INT_MIN <= n <= INT_MAX:
        raise OverflowError(f"{n} does not fit a 32-bit int")
    write_long(out, n)


def read_long(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the zig-zag varint at `pos`."""
    b = data[pos]
    pos += 1
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        if shift > _MAX_VARINT_SHIFT:
            raise ValueError("varint longer than 10 bytes")
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
    if n >> 64:
        raise ValueError("varint beyond 64 bits")
    return (n >> 1) ^ -(n & 1), pos


def read_count(data: bytes, pos: int) -> tuple[int, int]:
    """The item count of an array or map block (a negative count is followed by the block's size in bytes)."""
    count, pos = read_long(data, pos)
    if count < 0:
        count = -count
        _, pos = read_long(data, pos)
    if count > len(data) - pos:  # every item takes at least one byte (compile_codec makes sure)
        raise ValueError(f"block of {count} items is longer than the {len(data) - pos} bytes left")
    return count, pos


def read_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    n, pos = read_long(data, pos)
    end = pos + n
    if n < 0 or end > len(data):
        raise ValueError(f"length {n} at byte {pos} runs past the end of the payload")
    return data[pos:end], end


def read_string(data: bytes, pos: int) -> tuple[str, int]:
    raw, pos = read_bytes(data, pos)
    return raw.decode(), pos


def read_fixed(data: bytes, pos: int, size: int) -> tuple[bytes, int]:
    end = pos + size
    if end > len(data):
        raise ValueError(f"fixed of {size} bytes at byte {pos} runs past the end of the payload")
    return data[pos:end], end


def read_index(data: bytes, pos: int, size: int, what: str) -> tuple[int, int]:
    index, pos = read_long(data, pos)
    if not 0 <= index < size:
        raise ValueError(f"{what} index {index} out of range 0..{size - 1}")
    return index, pos


def read_boolean(data: bytes, pos: int) -> tuple[bool, int]:
    b = data[pos]
    if b > 1:
        raise ValueError(f"boolean byte {b} is neither 0 nor 1")
    return b == 1, pos + 1


def write_string(out: bytearray, s: str) -> None:
    raw = s.encode()
    n = len(raw)
    if n < 64:
        out.append(n << 1)
    else:
        write_long(out, n)
    out += raw


def write_bytes(out: bytearray, raw: bytes) -> None:
    if not isinstance(raw, (bytes, bytearray)):
        raise TypeError(f"expected bytes, got {type(raw).__name__}")
    write_long(out, len(raw))
    out += raw


def write_fixed(out: bytearray, raw: bytes, size: int) -> None:
    if len(raw) != size:
        raise ValueError(f"fixed of {size} bytes given {len(raw)}")
    out += raw


_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")

# What the generated code sees besides its constants.
_RUNTIME: dict[str, Any] = {
    "write_long": write_long, "write_int": write_int, "write_string": write_string, "write_bytes": write_bytes,
    "write_fixed": write_fixed, "read_count": read_count, "read_bytes": read_bytes,
    "read_string": read_string, "read_fixed": read_fixed, "read_index": read_index, "read_boolean": read_boolean,
    "pack_double": _DOUBLE.pack, "pack_float": _FLOAT.pack, "unpack_double": _DOUBLE.unpack_from,
    "unpack_float": _FLOAT.unpack_from, "Integral": numbers.Integral, "Real": numbers.Real, "Mapping": Mapping,
    "Sequence": Sequence, "array": array.array, "INT_MIN": INT_MIN, "INT_MAX": INT_MAX, "LONG_MIN": LONG_MIN,
    "LONG_MAX": LONG_MAX,
}


@dataclass(frozen=True, slots=True)
class Codec:
    """`encode(out, record)` appends the body to a bytearray; `decode(data, pos)` returns (record, next pos)."""

    encode: Callable[[bytearray, Any], None]
    decode: Callable[[bytes, int], tuple[Any, int]]
    source: str  # the generated code, for debugging


def compile_codec(schema: Any) -> Codec | None:
    """Generate the codec of a schema (its JSON form, as in an .avsc file); None where fastavro must stay."""
    try:
        return _Generator().codec(schema)
    except (Unsupported, RecursionError, KeyError, TypeError, ValueError):  # anything it cannot read: fastavro
        return None


class _Generator:
    def __init__(self) -> None:
        self.named: dict[str, dict] = {}  # full name -> schema
        self.functions: dict[str, str] = {}  # full name -> base name of its generated functions
        self.blocks: list[str] = []
        self.constants: dict[str, Any] = {}
        self.counter = 0

    # --- names ------------------------------------------------------------------------------------------

    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}{self.counter}"

    def constant(self, value: Any) -> str:
        name = self.fresh("K")
        self.constants[name] = value
        return name

    @staticmethod
    def full_name(schema: dict, namespace: str) -> str:
        name = schema["name"]
        if "." in name:
            return name
        ns = schema.get("namespace", namespace)
        return f"{ns}.{name}" if ns else name

    def resolve(self, schema: Any, namespace: str) -> tuple[Any, str]:
        """A named reference becomes its definition; (schema, namespace it lives in)."""
        if isinstance(schema, str) and schema not in PRIMITIVES:
            full = schema if "." in schema or not namespace else f"{namespace}.{schema}"
            if full not in self.named and schema in self.named:
                full = schema
            if full not in self.named:
                raise Unsupported(f"unknown type {schema}")
            definition = self.named[full]
            return definition, full.rpartition(".")[0]
        if isinstance(schema, dict) and schema.get("type") in PRIMITIVES:
            if "logicalType" in schema:
                raise Unsupported("logical type")
            return schema["type"], namespace
        return schema, namespace

    def kind(self, schema: Any) -> str:
        if isinstance(schema, str):
            return schema
        if isinstance(schema, list):
            return "union"
        if "logicalType" in schema:
            raise Unsupported("logical type")
        return schema["type"]

    def define(self, schema: dict, namespace: str) -> str:
        """The base name of a named type's generated functions, generating them on first sight."""
        full = self.full_name(schema, namespace)
        if full in self.functions:
            return self.functions[full]
        base = self.fresh("T")
        self.named[full] = schema
        self.functions[full] = base
        self.generate_named(base, schema, full.rpartition(".")[0])
        return base

    # --- top level --------------------------------------------------------------------------------------

    def codec(self, schema: Any) -> Codec:
        enc = ["def encode(out, v):"]
        dec = ["def decode(data, pos):", "    size = len(data)"]
        self.encode_value(enc, "v", schema, "", 1)
        self.decode_value(dec, "v", schema, "", 1)
        dec.append("    return v, pos")
        source = "\n\n".join([*self.blocks, "\n".join(enc), "\n".join(dec)]) + "\n"
        namespace = dict(_RUNTIME, **self.constants)
        exec(compile(source, "<avro codec>", "exec"), namespace)  # noqa: S102 - our own generated code
        return Codec(namespace["encode"], namespace["decode"], source)

    def generate_named(self, base: str, schema: dict, namespace: str) -> None:
        kind = schema["type"]
        enc = [f"def enc_{base}(out, v):"]
        dec = [f"def dec_{base}(data, pos):", "    size = len(data)"]
        if kind == "record":
            names = []
            for field in schema["fields"]:
                var = self.fresh("f")
                names.append((field["name"], var))
                self.encode_field(enc, var, field, namespace)
                self.decode_value(dec, var, field["type"], namespace, 1)
            dec.append("    return {" + ", ".join(f"{name!r}: {var}" for name, var in names) + "}, pos")
            if not names:
                enc.append("    pass")
        elif kind == "enum":
            symbols = tuple(schema["symbols"])
            index = self.constant({s: i for i, s in enumerate(symbols)})
            enc.append(f"    write_long(out, {index}[v])")
            table = self.constant(symbols)
            dec.append(f"    i, pos = read_index(data, pos, {len(symbols)}, 'enum')")
            dec.append(f"    return {table}[i], pos")
        elif kind == "fixed":
            enc.append(f"    write_fixed(out, v, {int(schema['size'])})")
            dec.append(f"    return read_fixed(data, pos, {int(schema['size'])})")
        else:
            raise Unsupported(f"named type {kind}")
        self.blocks.append("\n".join(enc) + "\n\n" + "\n".join(dec))

    # --- encoding ---------------------------------------------------------------------------------------

    def encode_field(self, lines: list[str], var: str, field: dict, namespace: str) -> None:
        """As fastavro's record writer: a missing field takes its default, a missing nullable field is null,
        any other missing field is an error; a float or double field is converted with float()."""
        name = field["name"]
        ftype = field["type"]
        if "default" in field:
            lines.append(f"    {var} = v.get({name!r}, {self.constant(field['default'])})")
        elif ftype == "null" or (isinstance(ftype, list) and "null" in ftype):
            lines.append(f"    {var} = v.get({name!r})")
        else:
            lines.append(f"    {var} = v[{name!r}]")
        if ftype in ("float", "double"):
            lines.append(f"    {var} = float({var})")
        self.encode_value(lines, var, ftype, namespace, 1)

    def encode_value(self, lines: list[str], var: str, schema: Any, namespace: str, depth: int) -> None:
        pad = "    " * depth
        schema, namespace = self.resolve(schema, namespace)
        kind = self.kind(schema)
        if kind == "null":
            lines.append(f"{pad}if {var} is not None: raise TypeError('expected null')")
        elif kind == "boolean":
            lines.append(f"{pad}out.append(1 if {var} else 0)")
        elif kind == "int":
            lines.append(f"{pad}write_int(out, {var})")
        elif kind == "long":
            lines.append(f"{pad}if 0 <= {var} < 64: out.append({var} << 1)")
            lines.append(f"{pad}else: write_long(out, {var})")
        elif kind == "double":
            lines.append(f"{pad}out += pack_double({var})")
        elif kind == "float":
            lines.append(f"{pad}out += pack_float({var})")
        elif kind == "string":
            raw = self.fresh("b")
            lines.append(f"{pad}{raw} = {var}.encode()")
            lines.append(f"{pad}if len({raw}) < 64: out.append(len({raw}) << 1)")
            lines.append(f"{pad}else: write_long(out, len({raw}))")
            lines.append(f"{pad}out += {raw}")
        elif kind == "bytes":
            lines.append(f"{pad}write_bytes(out, {var})")
        elif kind in ("record", "enum", "fixed"):
            lines.append(f"{pad}enc_{self.define(schema, namespace)}(out, {var})")
        elif kind == "array":
            self.require_sized(schema["items"], namespace)
            item = self.fresh("i")
            lines.append(f"{pad}if {var}:")
            lines.append(f"{pad}    write_long(out, len({var}))")
            lines.append(f"{pad}    for {item} in {var}:")
            self.encode_value(lines, item, schema["items"], namespace, depth + 2)
            lines.append(f"{pad}out.append(0)")
        elif kind == "map":
            self.require_sized(schema["values"], namespace)
            key, item = self.fresh("k"), self.fresh("i")
            lines.append(f"{pad}if {var}:")
            lines.append(f"{pad}    write_long(out, len({var}))")
            lines.append(f"{pad}    for {key}, {item} in {var}.items():")
            lines.append(f"{pad}        write_string(out, {key})")
            self.encode_value(lines, item, schema["values"], namespace, depth + 2)
            lines.append(f"{pad}out.append(0)")
        elif kind == "union":
            self.encode_union(lines, var, schema, namespace, depth)
        else:
            raise Unsupported(f"type {kind}")

    def encode_union(self, lines: list[str], var: str, branches: list, namespace: str, depth: int) -> None:
        """fastavro picks the first branch the value validates against; these tests are its validators, so the
        choice is the same wherever a Python value can match only one branch of a kind."""
        pad = "    " * depth
        kinds = [self.kind(self.resolve(b, namespace)[0]) for b in branches]
        if sum(k in ("record", "map") for k in kinds) > 1 or sum(k == "array" for k in kinds) > 1 or \
                {"float", "double"} <= set(kinds) or len(branches) > 63:
            raise Unsupported("ambiguous union")
        keyword = "if"
        for index, (branch, kind) in enumerate(zip(branches, kinds, strict=True)):
            resolved, inner = self.resolve(branch, namespace)
            test = self.union_test(var, resolved, kind)
            lines.append(f"{pad}{keyword} {test}:")
            lines.append(f"{pad}    out.append({index << 1})")
            if kind != "null":
                self.encode_value(lines, var, resolved, inner, depth + 1)
            keyword = "elif"
        lines.append(f"{pad}else: raise ValueError('the value fits no branch of the union')")

    def union_test(self, var: str, schema: Any, kind: str) -> str:
        not_bool = f"{var}.__class__ is not bool"
        if kind == "enum":
            return f"{var} in {self.constant(tuple(schema['symbols']))}"
        if kind == "fixed":
            return f"(isinstance({var}, bytes) and len({var}) == {int(schema['size'])})"
        return {
            "null": f"{var} is None",
            "boolean": f"({var} is True or {var} is False)",
            # Exact classes first: isinstance() against an ABC is slow, and int and float are what arrive.
            "int": f"(({var}.__class__ is int or isinstance({var}, Integral) and {not_bool}) "
                   f"and INT_MIN <= {var} <= INT_MAX)",
            "long": f"(({var}.__class__ is int or isinstance({var}, Integral) and {not_bool}) "
                    f"and LONG_MIN <= {var} <= LONG_MAX)",
            "float": f"({var}.__class__ is float or isinstance({var}, Real) and {not_bool})",
            "double": f"({var}.__class__ is float or isinstance({var}, Real) and {not_bool})",
            "string": f"isinstance({var}, str)",
            "bytes": f"isinstance({var}, (bytes, bytearray))",
            "record": f"isinstance({var}, Mapping)",
            "map": f"isinstance({var}, Mapping)",
            "array": f"(isinstance({var}, (Sequence, array)) and not isinstance({var}, str))",
        }[kind]

    def require_sized(self, schema: Any, namespace: str) -> None:
        """Arrays and maps of values that may take no bytes are left to fastavro (read_count's length check
        assumes every item takes at least one)."""
        if self.may_be_empty(schema, namespace):
            raise Unsupported("items that may take no bytes")

    def may_be_empty(self, schema: Any, namespace: str) -> bool:
        """Whether a value of this type can encode to zero bytes (null, a record of such fields, fixed of 0)."""
        resolved, inner = self.resolve(schema, namespace)
        kind = self.kind(resolved)
        if kind == "null":
            return True
        if kind == "record":
            return all(self.may_be_empty(f["type"], inner) for f in resolved["fields"])
        return kind == "fixed" and not resolved["size"]

    # --- decoding ---------------------------------------------------------------------------------------

    def decode_value(self, lines: list[str], var: str, schema: Any, namespace: str, depth: int) -> None:
        pad = "    " * depth
        schema, namespace = self.resolve(schema, namespace)
        kind = self.kind(schema)
        if kind == "null":
            lines.append(f"{pad}{var} = None")
        elif kind == "boolean":
            lines.append(f"{pad}{var}, pos = read_boolean(data, pos)")
        elif kind in ("int", "long"):
            # The varint inline: timestamps take 6 bytes, and a call per long cost more than the loop.
            byte, shift = self.fresh("x"), self.fresh("s")
            lines.append(f"{pad}{byte} = data[pos]")
            lines.append(f"{pad}pos += 1")
            lines.append(f"{pad}{var} = {byte} & 127")
            lines.append(f"{pad}{shift} = 7")
            lines.append(f"{pad}while {byte} & 128:")
            lines.append(f"{pad}    if {shift} > 63: raise ValueError('varint longer than 10 bytes')")
            lines.append(f"{pad}    {byte} = data[pos]")
            lines.append(f"{pad}    pos += 1")
            lines.append(f"{pad}    {var} |= ({byte} & 127) << {shift}")
            lines.append(f"{pad}    {shift} += 7")
            lines.append(f"{pad}if {shift} == 70 and {var} >> 64: raise ValueError('varint beyond 64 bits')")
            lines.append(f"{pad}{var} = ({var} >> 1) ^ -({var} & 1)")
            if kind == "int":
                lines.append(f"{pad}if not INT_MIN <= {var} <= INT_MAX: raise ValueError('int out of range')")
        elif kind == "double":
            lines.append(f"{pad}{var} = unpack_double(data, pos)[0]")
            lines.append(f"{pad}pos += 8")
        elif kind == "float":
            lines.append(f"{pad}{var} = unpack_float(data, pos)[0]")
            lines.append(f"{pad}pos += 4")
        elif kind == "string":
            n, end = self.fresh("n"), self.fresh("e")
            # A short string inline (its length one varint byte); anything else through read_string.
            lines.append(f"{pad}{n} = data[pos]")
            lines.append(f"{pad}{end} = pos + 1 + ({n} >> 1)")
            lines.append(f"{pad}if {n} < 128 and not {n} & 1 and {end} <= size:")
            lines.append(f"{pad}    {var} = data[pos + 1:{end}].decode()")
            lines.append(f"{pad}    pos = {end}")
            lines.append(f"{pad}else: {var}, pos = read_string(data, pos)")
        elif kind == "bytes":
            lines.append(f"{pad}{var}, pos = read_bytes(data, pos)")
        elif kind in ("record", "enum", "fixed"):
            lines.append(f"{pad}{var}, pos = dec_{self.define(schema, namespace)}(data, pos)")
        elif kind == "array":
            self.require_sized(schema["items"], namespace)
            count, item = self.fresh("c"), self.fresh("i")
            lines.append(f"{pad}{var} = []")
            lines.append(f"{pad}while True:")
            lines.append(f"{pad}    {count}, pos = read_count(data, pos)")
            lines.append(f"{pad}    if not {count}: break")
            lines.append(f"{pad}    for _ in range({count}):")
            self.decode_value(lines, item, schema["items"], namespace, depth + 2)
            lines.append(f"{pad}        {var}.append({item})")
        elif kind == "map":
            self.require_sized(schema["values"], namespace)
            count, key, item = self.fresh("c"), self.fresh("k"), self.fresh("i")
            lines.append(f"{pad}{var} = {{}}")
            lines.append(f"{pad}while True:")
            lines.append(f"{pad}    {count}, pos = read_count(data, pos)")
            lines.append(f"{pad}    if not {count}: break")
            lines.append(f"{pad}    for _ in range({count}):")
            lines.append(f"{pad}        {key}, pos = read_string(data, pos)")
            self.decode_value(lines, item, schema["values"], namespace, depth + 2)
            lines.append(f"{pad}        {var}[{key}] = {item}")
        elif kind == "union":
            # The branch index is one varint byte (encode_union allows at most 63 branches): 2 * index.
            index = self.fresh("u")
            lines.append(f"{pad}{index} = data[pos]")
            lines.append(f"{pad}pos += 1")
            keyword = "if"
            for i, branch in enumerate(schema):
                lines.append(f"{pad}{keyword} {index} == {i << 1}:")
                self.decode_value(lines, var, branch, namespace, depth + 1)
                keyword = "elif"
            lines.append(f"{pad}else: raise ValueError(f'union branch byte {{{index}}} out of range')")
        else:
            raise Unsupported(f"type {kind}")

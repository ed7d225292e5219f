"""Templates: how a row of the dataset becomes one document of text.

A template is plain text with ``{column}`` placeholders; ``{metadata.url}`` reaches into a
struct column and ``{{``/``}}`` are literal braces. Placeholders name columns only: no
indexing, conversion or format spec, so a template can never run code or surprise anyone.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from .errors import UsageError
from .subsets import DatasetSpec, Preset

_ESCAPE = re.compile(r"\\([nt\\])")
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}
_NAME = re.compile(r"^[^\W\d][\w-]*(\.[^\W\d][\w-]*)*$")


def unescape(text: str) -> str:
    r"""Interpret ``\n``, ``\t`` and ``\\``, so shells need no literal newlines; leave other backslashes."""
    return _ESCAPE.sub(lambda m: _ESCAPES[m.group(1)], text)


@dataclass(frozen=True)
class Template:
    """A parsed template. ``fields`` are column paths such as ``("metadata", "url")``."""

    text: str
    literals: tuple[str, ...]  # one more than fields: literal, field, literal, ..., literal
    fields: tuple[tuple[str, ...], ...]
    strip: bool = False

    @property
    def columns(self) -> list[str]:
        """Top-level columns the template reads, in order of first use."""
        return list(dict.fromkeys(path[0] for path in self.fields))

    def column(self, batch: pa.RecordBatch | pa.Table) -> pa.Array | None:
        """The rendered documents as an Arrow string array, where the template is one string column as is."""
        if self.literals != ("", "") or len(self.fields) != 1 or self.strip:
            return None
        path = self.fields[0]
        column = batch.column(path[0])
        if len(path) > 1:
            column = pc.struct_field(column, list(path[1:]))
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        return column if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) else None

    def render(self, batch: pa.RecordBatch | pa.Table) -> list[str]:
        """Render every row of ``batch``; nulls render as empty strings."""
        values = [self._strings(batch, path) for path in self.fields]
        if self.literals == ("", "") and len(values) == 1:
            return values[0]
        if not values:
            return ["".join(self.literals)] * batch.num_rows
        pattern = "{}".join(lit.replace("{", "{{").replace("}", "}}") for lit in self.literals)
        return list(map(pattern.format, *values))

    def _strings(self, batch: pa.RecordBatch | pa.Table, path: tuple[str, ...]) -> list[str]:
        column = batch.column(path[0])
        if len(path) > 1:
            column = pc.struct_field(column, list(path[1:]))
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            strings = column.to_pylist()
            if column.null_count:
                strings = ["" if s is None else s for s in strings]
        else:
            strings = ["" if v is None else str(v) for v in column.to_pylist()]
        return [s.strip() for s in strings] if self.strip else strings


def parse(text: str, *, strip: bool = False) -> Template:
    """Parse a template string (escapes already interpreted).

    Raises:
        UsageError: unbalanced braces, or a placeholder that is not a plain column path.
    """
    literals: list[str] = []
    fields: list[tuple[str, ...]] = []
    pending = ""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise UsageError(f"template {text!r} is not valid: {e}; write literal braces as {{{{ and }}}}") from None
    for literal, name, spec, conversion in parsed:
        pending += literal
        if name is None:
            continue
        if spec or conversion or not _NAME.match(name):
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise UsageError(
                f"template placeholder {shown} is not a column name; placeholders name columns only, "
                "like {text} or {metadata.url} (no indexing, conversion or format spec)"
            )
        literals.append(pending)
        pending = ""
        fields.append(tuple(name.split(".")))
    literals.append(pending)
    return Template(text, tuple(literals), tuple(fields), strip)


def resolve(subset: DatasetSpec, template: str | None, schema: pa.Schema) -> tuple[Template, Preset | None]:
    """The template for ``subset``: a preset name or a template string (None: the ``text`` preset), checked against ``schema``.

    Returns the template and the preset it came from (None for a custom string).

    Raises:
        UsageError: the template is malformed or names a column the subset does not have.
    """
    preset = subset.presets.get(template or "text")
    parsed = parse(preset.template, strip=preset.strip) if preset else parse(unescape(template or ""))
    for path in parsed.fields:
        if not _has_path(schema, path) and template is None:
            raise UsageError(
                f"{subset.name} has no {{{'.'.join(path)}}} column for the default template; pass --template "
                f"with placeholders for the columns to write, e.g. --template '{{{schema.names[0]}}}'; "
                f"columns: {', '.join(column_paths(schema))}"
            )
        if not _has_path(schema, path):
            raise UsageError(
                f"template placeholder {{{'.'.join(path)}}} names no column of {subset.name}; "
                f"columns: {', '.join(column_paths(schema))} (presets: {', '.join(subset.presets)})"
            )
    return parsed, preset


def column_paths(schema: pa.Schema) -> list[str]:
    """Every column a placeholder can name, struct fields as ``parent.child``."""
    paths: list[str] = []

    def walk(prefix: str, field: pa.Field) -> None:
        paths.append(prefix + field.name)
        if pa.types.is_struct(field.type):
            for child in field.type:
                walk(prefix + field.name + ".", child)

    for field in schema:
        walk("", field)
    return paths


def _has_path(schema: pa.Schema | pa.StructType, path: tuple[str, ...]) -> bool:
    names = [f.name for f in schema]
    if path[0] not in names:
        return False
    field = schema.field(path[0]) if isinstance(schema, pa.Schema) else schema.field(names.index(path[0]))
    if len(path) == 1:
        return True
    return pa.types.is_struct(field.type) and _has_path(field.type, path[1:])

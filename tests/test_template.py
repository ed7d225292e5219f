import datetime as dt

import pyarrow as pa
import pytest

from smollm_corpus.errors import UsageError
from smollm_corpus.subsets import SUBSETS
from smollm_corpus.template import parse, resolve, unescape

from mirror import SCHEMAS

FINEWEB = SUBSETS["fineweb-edu-dedup"]


def batch(**columns) -> pa.Table:
    return pa.table(columns)


def test_unescape_interprets_newline_tab_and_backslash_only():
    assert unescape(r"a\nb\tc\\d\xe") == "a\nb\tc\\d\\xe"


def test_literal_braces_and_placeholders_render():
    t = parse("{{x}} {a}-{b}")
    assert t.render(batch(a=["1", None], b=["2", "3"])) == ["{x} 1-2", "{x} -3"]


def test_single_column_template_returns_the_column_itself():
    assert parse("{text}").render(batch(text=["a", "b"])) == ["a", "b"]


def test_struct_fields_and_non_string_values_render_as_text():
    schema = SCHEMAS["fineweb-edu-dedup"]
    t, _ = resolve(FINEWEB, "{metadata.url} {metadata.date} {metadata.score}", schema)
    meta = {"dump": "d", "url": "u", "date": dt.datetime(2013, 5, 18, 5, 48), "file_path": "f", "language": "en",
            "language_score": 0.5, "token_count": 3, "score": 3.25, "int_score": 3}
    table = pa.Table.from_pylist([{"text": "t", "id": "i", "metadata": meta}], schema=schema)
    assert t.render(table) == ["u 2013-05-18 05:48:00 3.25"]


def test_nanogpt_preset_strips_values():
    t, preset = resolve(SUBSETS["cosmopedia-v2"], "nanogpt", SCHEMAS["cosmopedia-v2"])
    assert preset.separator == "\n"
    assert t.render(batch(prompt=["  p \n"], text=["\n t "])) == ["#U:\np\n#B:\nt"]


@pytest.mark.parametrize(
    "template, message",
    [
        ("{nope}", "{nope} names no column of fineweb-edu-dedup; columns: text, id, metadata, metadata.dump"),
        ("{metadata.nope}", "{metadata.nope} names no column"),
        ("{text.inner}", "{text.inner} names no column"),
        ("{text!r}", "{text!r} is not a column name"),
        ("{text:>10}", "{text:>10} is not a column name"),
        ("{text[0]}", "{text[0]} is not a column name"),
        ("{}", "{} is not a column name"),
        ("{text", "is not valid"),
        ("text}", "is not valid"),
    ],
)
def test_bad_templates_are_usage_errors_naming_the_problem(template, message):
    with pytest.raises(UsageError, match=None) as info:
        resolve(FINEWEB, template, SCHEMAS["fineweb-edu-dedup"])
    assert message in str(info.value)


def test_template_without_placeholders_renders_its_literal_text():
    assert parse("lit {{braces}}").render(batch(text=["a", "b"])) == ["lit {braces}", "lit {braces}"]

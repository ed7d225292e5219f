import datetime as dt
import pickle

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from smollm_corpus.errors import UsageError
from smollm_corpus.where import parse

from mirror import rows_for

FINEWEB_COLUMNS = (
    "columns: text (string), id (string), metadata.dump (string), metadata.url (string), "
    "metadata.date (timestamp[s]), metadata.file_path (string), metadata.language (string), "
    "metadata.language_score (double), metadata.token_count (int64), metadata.score (double), "
    "metadata.int_score (int64)"
)

NUMBERS = pa.table(
    {
        "x": pa.array([1, 2, None, 4, -3], pa.int64()),
        "f": pa.array([0.5, 2.0, 2.5, None, -1e3], pa.float64()),
        "s": ["a", "it's", None, 'say "hi"', "back\\slash\nline"],
        "flag": [True, False, None, True, False],
    }
)


def keep(expressions: str | list[str], table: pa.Table = NUMBERS) -> list[int]:
    """The indices of the rows the filter keeps."""
    mask = parse(expressions, table.schema).mask(table)
    assert isinstance(mask, pa.BooleanArray) and mask.null_count == 0 and len(mask) == table.num_rows
    return [i for i, kept in enumerate(mask.to_pylist()) if kept]


def error(expressions: str | list[str], schema: pa.Schema) -> str:
    with pytest.raises(UsageError) as info:
        parse(expressions, schema)
    return str(info.value)


@pytest.mark.parametrize(
    "expression, rows",
    [
        ("x == 2", [1]),
        ("x = 2", [1]),
        ("x != 2", [0, 3, 4]),
        ("x < 2", [0, 4]),
        ("x <= 2", [0, 1, 4]),
        ("x > 2", [3]),
        ("x >= 2", [1, 3]),
        ("2 < x", [3]),
        ("x > -3", [0, 1, 3]),
        ("x>=-3", [0, 1, 3, 4]),
    ],
)
def test_each_comparison_operator_keeps_matching_rows_and_drops_nulls(expression, rows):
    assert keep(expression) == rows


def test_and_or_not_and_parentheses_combine_conditions():
    assert keep("x > 0 and x < 4") == [0, 1]
    assert keep("x == 1 or x == 4") == [0, 3]
    assert keep("not (x == 1 or x == 4)") == [1, 4]
    assert keep("x == 1 or x == 2 and f > 100") == [0]
    assert keep("(x == 1 or x == 2) and f > 1") == [1]


def test_keywords_are_case_insensitive():
    assert keep("x > 0 AND NOT x == 4 Or x IS NULL") == [0, 1, 2]
    assert keep("flag = TRUE") == [0, 3]


def test_in_and_not_in_match_lists_and_drop_nulls():
    assert keep("x in (1, 4)") == [0, 3]
    assert keep("x not in (1, 4)") == [1, 4]
    assert keep("not x in (1, 4)") == [1, 4]
    assert keep("s in ('a', \"it's\")") == [0, 1]
    assert keep("s NOT IN ('a')") == [1, 3, 4]


def test_null_rows_are_dropped_unless_the_condition_asks_for_them():
    assert keep("x == 1") == [0]
    assert keep("not x == 1") == [1, 3, 4]
    assert keep("x is null") == [2]
    assert keep("x is not null") == [0, 1, 3, 4]
    assert keep("x == 1 or x is null") == [0, 2]
    assert keep("f is null or x is null") == [2, 3]


def test_boolean_columns_compare_with_true_false_or_stand_alone():
    assert keep("flag == true") == [0, 3]
    assert keep("flag != true") == [1, 4]
    assert keep("flag") == [0, 3]
    assert keep("not flag") == [1, 4]
    assert keep("flag and x > 1") == [3]


def test_integer_and_float_columns_compare_with_either_kind_of_number():
    assert keep("x > 1.5") == [1, 3]
    assert keep("x == 2.0") == [1]
    assert keep("f >= 2") == [1, 2]
    assert keep("f < -1e2") == [4]
    assert keep("f == .5") == [0]
    assert keep("x in (1, 2.5, 4.0)") == [0, 3]
    assert keep("f in (2, 2.5)") == [1, 2]
    assert keep("x > 99999999999999999999") == []


def test_quoted_strings_take_escapes_in_either_quote():
    assert keep("s == 'it\\'s'") == [1]
    assert keep('s == "it\'s"') == [1]
    assert keep("s == 'say \"hi\"'") == [3]
    assert keep('s == "say \\"hi\\""') == [3]
    assert keep("s == 'back\\\\slash\\nline'") == [4]
    assert keep("s > 'b'") == [1, 3, 4]


def test_repeated_expressions_are_anded():
    assert keep(["x > 0", "x < 4", "f > 1"]) == [1]
    joined, repeated = parse(["x > 0 and x < 4"], NUMBERS.schema), parse(["x > 0", "x < 4"], NUMBERS.schema)
    assert joined.text == repeated.text == "x > 0 and x < 4"
    assert parse(["x > 0 or x < -1", "f > 1"], NUMBERS.schema).text == "(x > 0 or x < -1) and f > 1"


def test_columns_compare_with_columns_of_the_same_kind():
    table = pa.table({"a": [1, 5, None], "b": [2.5, 2.5, 1.0]})
    assert keep("a > b", table) == [1]


def test_struct_fields_filter_fineweb_rows():
    table = rows_for("fineweb-edu-dedup", 0, 100)
    kept = keep("metadata.int_score >= 4 and metadata.language_score > 0.95", table)
    metadata = table.column("metadata").to_pylist()
    expected = [i for i, m in enumerate(metadata) if m["int_score"] >= 4 and m["language_score"] > 0.95]
    assert kept == expected and 0 < len(kept) < 100


def test_struct_field_of_a_null_struct_is_null():
    schema = pa.schema([("m", pa.struct([("v", pa.int64())]))])
    table = pa.table({"m": [{"v": 1}, None, {"v": None}]}, schema=schema)
    assert keep("m.v == 1", table) == [0]
    assert keep("m.v is null", table) == [1, 2]
    assert keep("m is null", table) == [1]


def test_cosmopedia_and_python_edu_examples():
    cosmo = rows_for("cosmopedia-v2", 0, 100)
    kept = keep("format == 'textbook' and audience in ('college_students', 'researchers')", cosmo)
    rows = cosmo.to_pylist()
    assert kept == [i for i, r in enumerate(rows) if r["format"] == "textbook" and r["audience"] == "college_students"]
    assert kept
    python = rows_for("python-edu", 0, 100)
    kept = keep("int_score = 5 and score >= 4.5 and repo_name != 'user1/project1'", python)
    rows = python.to_pylist()
    wanted = [r["int_score"] == 5 and r["score"] >= 4.5 and r["repo_name"] != "user1/project1" for r in rows]
    assert kept == [i for i, w in enumerate(wanted) if w]
    assert kept


def test_timestamps_compare_with_iso_dates_and_times_as_utc():
    table = rows_for("fineweb-edu-dedup", 0, 100)  # 2013-05-18 05:48:ss with ss = row % 60
    seconds = [i % 60 for i in range(100)]
    assert keep("metadata.date >= '2013-05-18T05:48:50'", table) == [i for i, s in enumerate(seconds) if s >= 50]
    assert keep("metadata.date >= '2013-05-18 05:48:50Z'", table) == [i for i, s in enumerate(seconds) if s >= 50]
    assert keep("metadata.date >= '2013-05-18T07:48:50+02:00'", table) == [i for i, s in enumerate(seconds) if s >= 50]
    assert keep("metadata.date < '2013-05-18T05:48:00.500'", table) == [0, 60]
    assert keep("metadata.date > '2013-05-18T05:48'", table) == list(range(1, 60)) + list(range(61, 100))
    assert keep("metadata.date < '2013-05-19'", table) == list(range(100))
    assert keep("metadata.date in ('2013-05-18T05:48:01', '2013-05-18T05:48:02')", table) == [1, 2, 61, 62]
    aware = pa.table({"t": pa.array([dt.datetime(2024, 1, 1, 12), None], pa.timestamp("ms", tz="Europe/Paris"))})
    assert keep("t == '2024-01-01T12:00:00'", aware) == [0]  # stored as UTC; a literal without offset is UTC
    assert keep("t == '2024-01-01T13:00:00+01:00'", aware) == [0]


def test_mask_accepts_record_batches_and_chunked_tables():
    table = pa.concat_tables([NUMBERS, NUMBERS])
    row_filter = parse(["x in (1, 4) or s is null"], NUMBERS.schema)
    assert row_filter.mask(table).to_pylist() == [True, False, True, True, False] * 2
    assert row_filter.mask(NUMBERS.to_batches()[0]).to_pylist() == [True, False, True, True, False]
    assert len(row_filter.mask(NUMBERS.slice(0, 0))) == 0


def test_columns_are_the_top_level_columns_read_in_order():
    schema = rows_for("fineweb-edu-dedup", 0, 1).schema
    row_filter = parse(["metadata.int_score >= 4 and id != 'x'", "metadata.url is not null or text in ('a')"], schema)
    assert row_filter.columns == ("metadata", "id", "text")


def test_text_is_canonical_and_parses_back_to_the_same_filter():
    schema = NUMBERS.schema
    spellings = ["x=1 AND (s = \"it's\")", "(x == 1) and s == 'it\\'s'", "  x  ==  1  and  ( ( s == 'it\\'s' ) )"]
    assert {parse([s], schema).text for s in spellings} == {"x == 1 and s == 'it\\'s'"}
    text = parse(["not (flag or x not in (1, 2.5)) and (s is null or s == 'a\\nb\\\\')"], schema).text
    assert text == "not (flag or x not in (1, 2.5)) and (s is null or s == 'a\\nb\\\\')"
    assert parse([text], schema).text == text
    date = parse(["metadata.date >= '2013-05-18T07:48:50+02:00'"], rows_for("fineweb-edu-dedup", 0, 1).schema)
    assert date.text == "metadata.date >= '2013-05-18 05:48:50'"


def test_filter_pickles_for_worker_processes():
    row_filter = parse(["metadata.date > '2013-05-18T05:48:30' and metadata.int_score in (4, 5)"],
                       rows_for("fineweb-edu-dedup", 0, 1).schema)
    copy = pickle.loads(pickle.dumps(row_filter))
    table = rows_for("fineweb-edu-dedup", 0, 100)
    assert copy == row_filter and copy.mask(table).equals(row_filter.mask(table))
    assert pc.sum(copy.mask(table)).as_py() > 0


def test_bad_expression_message_shows_problem_position_excerpt_and_columns():
    message = error("metadata.int_score >= 4 and metadata.language == 3", rows_for("fineweb-edu-dedup", 0, 1).schema)
    assert message == (
        "--where expression, at character 29: cannot compare metadata.language (string) with 3, a number; "
        "compare it with quoted text, like 'abc'\n"
        "  metadata.int_score >= 4 and metadata.language == 3\n"
        "                              ^^^^^^^^^^^^^^^^^^^^^^\n" + FINEWEB_COLUMNS
    )


@pytest.mark.parametrize(
    "expression, problem, position",
    [
        # unknown columns
        ("metadata.int_scor >= 4", "unknown column 'metadata.int_scor'", "at character 1"),
        ("text.inner == 'a'", "unknown column 'text.inner'", "at character 1"),
        ("nope is null", "unknown column 'nope'", "at character 1"),
        ("text == textbook", "unknown column 'textbook'; to compare with text, quote it: 'textbook'", "at character 9"),
        # type mismatches
        ("text > 3", "cannot compare text (string) with 3, a number; compare it with quoted text", "at character 1"),
        ("metadata.int_score == '4'",
         "cannot compare metadata.int_score (int64) with '4', a string; compare it with a number", "at character 1"),
        ("3 < metadata.dump", "cannot compare metadata.dump (string) with 3, a number", "at character 1"),
        ("metadata.score == true", "cannot compare metadata.score (double) with true, a boolean", "at character 1"),
        ("metadata.int_score in (4, 'five')", "cannot compare metadata.int_score (int64) with 'five', a string",
         "at character 1"),
        ("metadata == 'x'",
         "metadata is a struct, not a value; compare one of its fields (metadata.<field>, listed below)",
         "at character 1"),
        ("metadata.date > 2013", "cannot compare metadata.date (timestamp[s]) with 2013, a number; "
         "compare it with a quoted ISO date/time, like '2013-05-18'", "at character 1"),
        ("metadata.date > 'yesterday'", "'yesterday' is not an ISO date/time for metadata.date (timestamp[s])",
         "at character 17"),
        ("metadata.score > metadata.url", "cannot compare metadata.score (double) with metadata.url (string)",
         "at character 1"),
        ("1 == 1", "compare a column with a value, not two values", "at character 1"),
        ("text == null", "null is not a value; write 'column is null' or 'column is not null'", "at character 9"),
        ("'a' in ('a')", "'in' needs a column on its left, not a value", "at character 1"),
        ("'a' not in ('a')", "'not in' needs a column on its left, not a value", "at character 1"),
        ("metadata.int_score is null and 3 is not null", "'is' needs a column on its left", "at character 32"),
        # syntax
        ("", "empty expression", "at the end"),
        ("(text == 'a'", "expected ')' to close the '(' at character 1, found the end", "at the end"),
        ("text == 'a')", "expected 'and' or 'or' between conditions, found ')'", "at character 12"),
        ("text == 'a' id == 'b'", "expected 'and' or 'or' between conditions, found 'id'", "at character 13"),
        ("text == 'abc", "unterminated text; close it with '", "at character 9"),
        ("text ~ 'a'", "unexpected character '~'", "at character 6"),
        ("text", "expected a comparison (==, !=, <, <=, >, >=, in, not in, is null) after 'text', found the end",
         "at the end"),
        ("text == 'a' and", "expected a column or a value, found the end", "at the end"),
        ("text == == 'a'", "expected a column or a value, found '=='", "at character 9"),
        ("text in 'a'", "expected '(' after 'in', found \"'a'\"", "at character 9"),
        ("text in ()", "expected a value (number, quoted text, true or false) in the 'in' list, found ')'",
         "at character 10"),
        ("text not in (a)", "in the 'not in' list, found 'a'; quote text: 'a'", "at character 14"),
        ("text in ('a' 'b')", "expected ',' or ')' in the 'in' list, found \"'b'\"", "at character 14"),
        ("text is 'a'", "expected null after 'is', found \"'a'\"", "at character 9"),
    ],
)
def test_bad_expressions_are_usage_errors_naming_problem_position_and_columns(expression, problem, position):
    message = error([expression], rows_for("fineweb-edu-dedup", 0, 1).schema)
    first, excerpt, carets, columns = message.split("\n")
    assert first.startswith(f"--where expression, {position}: ") and problem in first
    assert excerpt == "  " + expression and carets.strip() and set(carets.strip()) == {"^"}
    assert columns == FINEWEB_COLUMNS


def test_error_in_a_repeated_expression_shows_that_expression():
    message = error(["x > 0", "f > 'a'"], NUMBERS.schema)
    assert message.split("\n")[:3] == [
        "--where expression, at character 1: cannot compare f (double) with 'a', a string; "
        "compare it with a number, like 4 or 0.95",
        "  f > 'a'",
        "  ^^^^^^^",
    ]
    assert message.endswith("columns: x (int64), f (double), s (string), flag (bool)")


def test_error_in_a_long_expression_shows_an_excerpt_around_the_problem():
    expression = " and ".join(["x > 0"] * 20 + ["s == 1"] + ["x > 0"] * 5)
    _, excerpt, carets, _ = error(expression, NUMBERS.schema).split("\n")
    assert excerpt.startswith("  ...") and excerpt.endswith("...") and len(excerpt) == 2 + 3 + 76 + 3
    assert excerpt[carets.index("^") :].startswith("s == 1") and carets.strip() == "^" * len("s == 1")


def test_columns_of_other_types_can_only_be_tested_for_null():
    table = pa.table({"tags": [["a"], None]})
    assert keep("tags is not null", table) == [0]
    message = error("tags == 'a'", table.schema)
    assert "tags is list<item: string>, which --where cannot compare; test it with 'is null'" in message

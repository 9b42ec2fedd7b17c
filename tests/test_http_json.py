"""Neon's JSON conversion rules (`json.rs` unit cases) and the response writer's shape and size check."""

import json

import pytest

from neon_local.serverless.json import (
    Column,
    PgTextError,
    ResponseTooLarge,
    ResponseWriter,
    command_and_count,
    fields_json,
    params_to_pg_text,
    parse_array,
    row_encoder,
    value_encoder,
)

TEXT, INT2, INT4, INT8, FLOAT4, FLOAT8, BOOL, JSONB = 25, 21, 23, 20, 700, 701, 16, 3802
ARRAYS = {1009: TEXT, 1005: INT2, 1007: INT4, 1016: INT8, 1021: FLOAT4, 1022: FLOAT8, 1000: BOOL, 3807: JSONB}


def convert(text, oid):
    return json.loads(value_encoder(oid, ARRAYS)(text))


def array(text, element_oid):
    return json.loads(parse_array(text, value_encoder(element_oid, {})))


def test_atomic_params():
    assert params_to_pg_text([True, False, 42, 'foo"', None]) == ["true", "false", "42", 'foo"', None]


def test_object_params_are_compact_json_with_sorted_keys():
    assert params_to_pg_text([{"b": 1, "a": {"d": [1, "x"], "c": None}}]) == ['{"a":{"c":null,"d":[1,"x"]},"b":1}']


def test_numbers_print_as_serde_json_does():
    assert params_to_pg_text([1.5, 42.0, 1e20, 1.5e-7, 10**30, -7]) == ["1.5", "42.0", "1e20", "1.5e-7", "1e30", "-7"]


def test_array_params_escape_strings():
    values = [True, False, None, "NULL", 42, "foo", 'bar"-\\']
    assert params_to_pg_text([values]) == ['{true,false,NULL,"NULL",42,"foo","bar\\"-\\\\"}']


def test_nested_array_params():
    nested = [[True, False], [None, 42], ["foo", 'bar"-\\']]
    assert params_to_pg_text([nested]) == ['{{true,false},{NULL,42},{"foo","bar\\"-\\\\"}}']


def test_array_of_objects_param():
    assert params_to_pg_text([[{"foo": 1}, {"bar": 2}]]) == ['{"{\\"foo\\":1}","{\\"bar\\":2}"}']


@pytest.mark.parametrize("text,oid,expected", [
    ("foo", TEXT, "foo"), ("42", INT4, 42), ("42", INT2, 42), ("42", INT8, "42"),
    ("42.42", FLOAT8, 42.42), ("42.42", FLOAT4, 42.42), ("NaN", FLOAT4, "NaN"),
    ("Infinity", FLOAT4, "Infinity"), ("-Infinity", FLOAT8, "-Infinity"),
    ("t", BOOL, True), ("f", BOOL, False), ("\\x414243", 17, "\\x414243"),
    ('{"s":"str","n":42,"f":4.2,"a":[null,3,"a"]}', JSONB, {"s": "str", "n": 42, "f": 4.2, "a": [None, 3, "a"]}),
])
def test_atomic_types(text, oid, expected):
    assert convert(text, oid) == expected


def test_text_arrays():
    assert array(r'{"aa\"\\\,a",cha,"bbbb"}', TEXT) == ['aa"\\,a', "cha", "bbbb"]
    assert array('{{"foo","bar"},{"bee","bop"}}', TEXT) == [["foo", "bar"], ["bee", "bop"]]
    assert array('{{{{"foo",NULL,"bop",bup}}}}', TEXT) == [[[["foo", None, "bop", "bup"]]]]
    assert array('{{"1",2,3},{4,NULL,6},{NULL,NULL,NULL}}', TEXT) == [["1", "2", "3"], ["4", None, "6"], [None] * 3]
    assert array('{"NULL",NULL}', TEXT) == ["NULL", None]


def test_bool_arrays():
    assert array("{t,f,t}", BOOL) == [True, False, True]
    assert array("{{t,NULL},{NULL,f}}", BOOL) == [[True, None], [None, False]]


def test_number_arrays():
    assert array("{1,2,3}", INT4) == [1, 2, 3]
    assert array("{1,2,3}", INT8) == ["1", "2", "3"]
    assert array("{1.1,2.2,3.3}", FLOAT8) == [1.1, 2.2, 3.3]
    assert array("{NaN,Infinity,-Infinity}", FLOAT4) == ["NaN", "Infinity", "-Infinity"]


def test_array_bounds_are_dropped():
    assert array("[1:1][-2:-1][3:5]={{{1,2,3},{4,5,6}}}", INT2) == [[[1, 2, 3], [4, 5, 6]]]


def test_jsonb_arrays():
    assert array('{"{}"}', JSONB) == [{}]
    assert array(r'{"{\"foo\": 1}", "{\"bar\": 2}"}', JSONB) == [{"foo": 1}, {"bar": 2}]
    assert array(r'{{"{\"foo\": 1}", "{\"bar\": 2}"}}', JSONB) == [[{"foo": 1}, {"bar": 2}]]


def test_empty_arrays_are_empty_lists():
    assert array("{}", INT4) == []
    assert array("{}", TEXT) == []


@pytest.mark.parametrize("text", ["{1,2", "1 2", "{1}}", '{"a}', "[1:2]{1,2}"])
def test_malformed_arrays(text):
    with pytest.raises(PgTextError):
        array(text, INT4)


def test_command_and_row_count():
    assert command_and_count("INSERT 0 3") == ("INSERT", 3)
    assert command_and_count("SELECT 5") == ("SELECT", 5)
    assert command_and_count("CREATE TABLE") == ("CREATE", None)
    assert command_and_count("") == ("", None)


def test_fields_have_seven_keys():
    fields = json.loads(fields_json([Column("answer", 23, 0, 0, 4, -1)]))
    assert fields == [{"name": "answer", "dataTypeID": 23, "tableID": 0, "columnID": 0,
                       "dataTypeSize": 4, "dataTypeModifier": -1, "format": "text"}]


COLUMNS = [Column("n", INT4, 0, 0, 4, -1), Column("s", TEXT, 0, 0, -1, -1), Column("arr", 1007, 0, 0, -1, -1)]
ROW = ("1", "a", "{1,2,3}")


@pytest.mark.parametrize("raw,array_mode,expected", [
    (False, False, [{"arr": [1, 2, 3], "n": 1, "s": "a"}]),
    (False, True, [[1, "a", [1, 2, 3]]]),
    (True, False, [{"arr": "{1,2,3}", "n": "1", "s": "a"}]),
    (True, True, [["1", "a", "{1,2,3}"]]),
])
def test_output_options(raw, array_mode, expected):
    encode = row_encoder(COLUMNS, raw, array_mode, ARRAYS)
    assert json.loads("[" + encode([ROW]) + "]") == expected


def test_nulls_and_duplicate_names():
    columns = [Column("a", INT4, 0, 0, 4, -1), Column("a", TEXT, 0, 0, -1, -1)]
    assert row_encoder(columns, False, False, {})([(None, "x")]) == '{"a":null,"a":"x"}'


@pytest.mark.parametrize("raw", [False, True])
def test_chunk_of_rows_with_a_late_null_and_percent_names(raw):
    # rows are encoded a chunk at a time: a NULL after string rows, '%' in names and values, 0 columns
    columns = [Column("100%", TEXT, 0, 0, -1, -1), Column("%s", TEXT, 0, 0, -1, -1)]
    rows = [("a%s", 'q"\n'), ("b", None), (None, "%")]
    assert row_encoder(columns, raw, False, {})(rows) == (
        '{"100%":"a%s","%s":"q\\"\\n"},{"100%":"b","%s":null},{"100%":null,"%s":"%"}')
    assert row_encoder(columns, raw, False, {})(rows[:1]) == '{"100%":"a%s","%s":"q\\"\\n"}'
    assert row_encoder(columns, raw, False, {})([("a%s", "\x7f\u2028é")]) == '{"100%":"a%s","%s":"\x7f\u2028é"}'
    assert row_encoder([], raw, False, {})([(), ()]) == "{},{}"


def _result(writer, rows, tag="SELECT 1"):
    encode = row_encoder(COLUMNS[:1], True, True, {})
    writer.begin_result(COLUMNS[:1])
    writer.add_rows(encode(rows), len(rows), lambda: encode(rows[-1:]))
    writer.end_result(tag, True)


def test_writer_shapes_a_batch():
    writer = ResponseWriter(1000)
    writer.begin_batch()
    _result(writer, [("1",)])
    _result(writer, [("2",), ("3",)], "SELECT 2")
    writer.end_batch()
    body = json.loads(writer.body())
    assert [r["rows"] for r in body["results"]] == [[["1"]], [["2"], ["3"]]]
    assert list(body["results"][1]) == ["fields", "rows", "command", "rowCount", "rowAsArray"]
    assert writer.size == len(writer.body())


def test_writer_checks_size_before_each_row_as_neon_does():
    probe = ResponseWriter(10**6)
    probe.begin_result(COLUMNS[:1])
    prefix = probe.size
    # rows '["1"]' are 5 bytes; before the 3rd row the buffer holds prefix + 5 + 1 + 5 bytes
    _result(ResponseWriter(prefix + 11), [("1",), ("1",), ("1",)])
    with pytest.raises(ResponseTooLarge, match="max is 10 bytes"):
        _result(ResponseWriter(10), [("1",)])
    with pytest.raises(ResponseTooLarge):
        _result(ResponseWriter(prefix + 10), [("1",), ("1",), ("1",)])

"""The allow-list's fingerprints by statement shape: a new text of a known shape skips the parse, and must get
exactly the fingerprint pglast would give it. Checked against pglast itself on statements with random literals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast import parser

from neon_local.limits.fingerprint import Fingerprinter, shape

TEMPLATES = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = {n};",
    "select id, title from books where year > {n} and title = {s} order by {n} limit {n} offset {n}",
    'select "Weird ""name""", t1.c2 from t1 where t1.c2 in ({n}, {n}, {s}) and "x" = {s}',
    "insert into t (a, b) values ({n}, {s}), ({n}, {s}) returning id",
    "update t set a = -{n}, b = {s}::varchar({n}) where id = {n}",
    "delete from t where created < now() - {s}::interval and x between {n} and {n}",
    "with q as (select {n} as x) select x * {n} from q where x <> {s}",
    "values ({n}, {s})",
    "select a[{n}], substring(b from {n} for {n}) from t tablesample bernoulli ({n})",
    "select 1::float({n})",  # the precision picks real or double precision: never by shape
    "select x from t where y = {s} -- {s}\n",
    "select x from t where y = {s}; select {n}",
]

numbers = st.one_of(st.integers(0, 10**12).map(str), st.floats(0, 1e9, allow_nan=False).map(repr),
                    st.sampled_from(["1.", ".5", "1e5", "1_000", "0x1F", "2.5E-3"]))
strings = st.text(st.sampled_from("ab1;'\"-$\\ é"), max_size=8).map(lambda t: "'" + t.replace("'", "''") + "'")


@settings(max_examples=200, deadline=None)
@given(template=st.sampled_from(TEMPLATES), values=st.lists(st.tuples(numbers, strings), min_size=2, max_size=2))
def test_a_shape_hit_gives_pglasts_fingerprint(template, values):
    fingerprints = Fingerprinter()
    for number, string in values:
        text = template.replace("{n}", number).replace("{s}", string)
        try:
            expected = [parser.fingerprint(part) for part in parser.split(text)]
        except parser.ParseError:
            continue  # e.g. float(0): the check refuses it as Postgres would, tested elsewhere
        assert [s.fingerprint for s in fingerprints.statements(text)] == expected, text


def test_names_and_numbers_in_names_are_not_literals():
    fingerprints = Fingerprinter()
    for text in ("select * from t1", "select * from t2", "select x.y1 from x", "select x.y2 from x",
                 "select 1::float(10)", "select 1::float(30)"):
        assert fingerprints.statements(text)[0].fingerprint == parser.fingerprint(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("SELECT abalance FROM a WHERE aid = 48213;", "SELECT abalance FROM a WHERE aid = ?;"),
    ("select 'a;b', 1.5e3, .5 from t1 where c = 'it''s'", "select ?, ?, ? from t1 where c = ?"),
    ('select "a1" from t where x = 0x1F', 'select "a1" from t where x = 0x1F'),
    ("select 1.2.3", "select 1.2.3"),
    ("select 1; select 2", None), ("select $1", None), ("select 1 -- c", None), ("select /* c */ 1", None),
    ("select $$x$$", None), ("select E'\\n'", None), ("select 'open", None), ("select 1::FLOAT(3)", None),
    ("begin", None), ("do $$ begin end $$", None), ("set x = 1", None),
])
def test_what_has_a_shape(text, expected):
    assert shape(text) == expected

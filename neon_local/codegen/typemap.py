"""Postgres types as TypeScript types, the way @neondatabase/serverless hands values over HTTP.

The driver asks /sql for raw text and parses each value by the column's type OID with its bundled pg-types
(node-postgres' defaults): only the OIDs below are parsed; every other type, including arrays of enums and of
types not listed, arrives as the text Postgres prints. Parameters are what the driver's prepareValue accepts.
"""

from __future__ import annotations

from dataclasses import dataclass

JSON = "Json"
INTERVAL = "Interval"
POINT = "{ x: number; y: number }"
CIRCLE = "{ x: number; y: number; radius: number }"

# type OID -> TypeScript type of the value the driver returns
RESULT_TYPES = {
    16: "boolean", 20: "string", 21: "number", 23: "number", 26: "number", 700: "number", 701: "number",
    1700: "string", 114: JSON, 3802: JSON, 1082: "Date", 1114: "Date", 1184: "Date", 17: "Uint8Array",
    1186: INTERVAL, 600: POINT, 718: CIRCLE,
    1000: "boolean[]", 1001: "Uint8Array[]", 1005: "number[]", 1007: "number[]", 1028: "number[]",
    1016: "string[]", 1017: f"Array<{POINT}>", 1021: "number[]", 1022: "number[]", 1231: "number[]",  # numeric[]: floats
    1115: "Date[]", 1182: "Date[]", 1185: "Date[]", 1187: f"{INTERVAL}[]", 199: f"{JSON}[]", 3807: f"{JSON}[]",
    **dict.fromkeys((651, 1008, 1009, 1014, 1015, 1040, 1041, 3907, 2951, 791, 1183, 1270), "string[]"),
}

# scalar type OID -> TypeScript type the driver serialises for a parameter of that type
PARAM_TYPES = {
    16: "boolean", 20: "string | number", 21: "number", 23: "number", 26: "number", 700: "number", 701: "number",
    1700: "string | number", 114: JSON, 3802: JSON, 1082: "Date | string", 1114: "Date | string",
    1184: "Date | string", 17: "Uint8Array",
}


@dataclass(frozen=True)
class PgType:
    oid: int
    name: str
    kind: str  # pg_type.typtype: b base, e enum, d domain, c composite, p pseudo, r range, m multirange
    element: int  # typelem of an array type, else 0
    base: int  # typbasetype of a domain, else 0
    labels: tuple[str, ...]  # an enum's labels in order

    @property
    def is_array(self) -> bool:
        return self.element != 0 and self.name.startswith("_")


def _labels(pg_type: PgType) -> str:
    return " | ".join(_string(label) for label in pg_type.labels) or "never"


def _string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def result_type(oid: int, types: dict[int, PgType]) -> str:
    if oid in RESULT_TYPES:
        return RESULT_TYPES[oid]
    pg_type = types.get(oid)
    if pg_type and pg_type.kind == "e":
        return _labels(pg_type)
    if pg_type and pg_type.kind == "d":  # RowDescription names the base type; kept for safety
        return result_type(pg_type.base, types)
    return "string"


def param_type(oid: int, types: dict[int, PgType]) -> str:
    pg_type = types.get(oid)
    if pg_type and pg_type.kind == "d":
        return param_type(pg_type.base, types)
    if pg_type and pg_type.kind == "e":
        return _labels(pg_type)
    if pg_type and pg_type.is_array:
        element = param_type(pg_type.element, types)
        return f"Array<{element}>" if " " in element else f"{element}[]"
    return PARAM_TYPES.get(oid, "string")

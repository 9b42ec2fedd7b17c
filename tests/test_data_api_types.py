"""`data-api types --lang ts`: the Database type compiles with tsc --strict against postgrest-js, and catches mistakes."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest

from data_api_support import rest  # noqa: F401 (fixture)
from http_support import NODE_DIR
from neon_local.data_api.schema import Schema
from neon_local.data_api.typescript import typescript


async def _tsc(source: str) -> subprocess.CompletedProcess:
    tsc = NODE_DIR / "node_modules" / ".bin" / "tsc"
    args = [str(tsc), "--strict", "--noEmit", "--skipLibCheck", "--target", "es2022", "--module", "nodenext",
            "--moduleResolution", "nodenext", source]
    return await asyncio.to_thread(subprocess.run, args, cwd=NODE_DIR, capture_output=True, text=True, timeout=300)


@pytest.mark.asyncio
async def test_generated_types_compile_and_catch_mistakes(rest):
    cached = await rest.api._schema("rest_test")
    generated = NODE_DIR / "data_api_types.generated.ts"
    generated.write_text(typescript(cached.schema))
    try:
        good = await _tsc("data_api_typed.ts")
        assert good.returncode == 0, good.stdout + good.stderr
        bad = await _tsc("data_api_typed_wrong.ts")
        assert bad.returncode != 0
        assert "nosuch" in bad.stdout and "Type 'string' is not assignable to type 'number'" in bad.stdout
        assert "nosuch_neon" in bad.stdout  # neon-js's createClient<Database> checks the columns too
    finally:
        generated.unlink()


def test_types_shape():
    schema = Schema.from_json(("public",), json.dumps({"tables": [{"schema": "public", "name": "t", "kind": "r", "pk": ["id"],
        "uniques": [["id"]], "columns": [
            {"name": "id", "type": "bigint", "base": "int8", "nullable": False, "default": True, "generated": False},
            {"name": "tags", "type": "text[]", "base": "_text", "nullable": True, "default": False, "generated": False},
            {"name": "g", "type": "integer", "base": "int4", "nullable": False, "default": True, "generated": True}]}],
        "fks": [], "functions": []}))
    text = typescript(schema)
    assert "Row: {\n          id: number\n          tags: string[] | null\n          g: number\n        }" in text
    assert "Insert: {\n          id?: number\n          tags?: string[] | null\n          g?: never\n        }" in text
    assert "Update: {\n          id?: number\n          tags?: string[] | null\n          g?: never\n        }" in text

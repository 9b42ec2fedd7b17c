"""The advisor: rule-based lints over a database's catalogs, for the console, `neon-local lint` and tests.

  lints.py   each lint: its name (Supabase splinter's where it has one), level, why, catalog query and fix
  engine.py  run them on a connection; findings as dicts or text
"""

from neon_local.advisor.engine import Finding, assert_no_lints, check, exit_code, format_text

__all__ = ["Finding", "assert_no_lints", "check", "exit_code", "format_text"]

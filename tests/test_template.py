"""The cached template every data dir is copied from: as small as a cleanly stopped cluster can be, and stamped
with the stub it holds, so that a copy's first start has nothing to copy twice or upgrade."""

from __future__ import annotations

import re

from neon_local.postgres import stub_upgrade
from neon_local.postgres.binaries import find_binaries
from neon_local.postgres.template import neon_template


async def test_the_template_keeps_one_wal_segment_and_the_current_stub_stamp(settings):
    template = await neon_template(find_binaries(settings.pg_bin), settings)
    segments = [p.name for p in (template / "pg_wal").iterdir() if re.fullmatch(r"[0-9A-F]{24}", p.name)]
    assert len(segments) == 1, segments
    assert stub_upgrade.is_current(template, find_binaries(settings.pg_bin).major)

"""Review of issue 12 (the transport-neutral core): behaviour that must stay as it was at 7aa5508.

Self-contained (its own gateway start) so that it runs unchanged against the code before the merges.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import aiohttp

try:  # after issue 12
    from wsgate.catalog import load_config
except ImportError:  # before: the loader knew the types itself
    from wsgate.config import load_config  # type: ignore[no-redef]
from wsgate.gateway import Gateway

DIRECTORY = """
service:
  - name: site
    accept: http://127.0.0.1:0/
    type: directory
    properties:
      directory: /site
      options: {options}
"""


async def _directory_status(tmp_path: Path, options: str) -> int:
    root = tmp_path / "site" / "sub"
    root.mkdir(parents=True)
    (root / "secret-name.txt").write_text("x")
    config = tmp_path / "gateway.yaml"
    config.write_text(textwrap.dedent(DIRECTORY.format(options=options)))
    gateway = Gateway(load_config(config))
    await gateway.start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{gateway.port_of('site')}/sub/") as response,
        ):
            return response.status
    finally:
        await gateway.stop(grace=1.0)


async def test_directory_listing_is_enabled_only_by_the_documented_spelling(tmp_path: Path) -> None:
    """``options: indexes`` lists folders; any other spelling (validated case-insensitively) never did.

    Parsing properties once (``Service.settings``, canonical spelling) silently turned listings on for
    configs that said ``Indexes`` or ``INDEXES``: a folder's file names exposed after an upgrade.
    """
    assert await _directory_status(tmp_path, "INDEXES") == 404


async def test_directory_listing_with_indexes(tmp_path: Path) -> None:
    assert await _directory_status(tmp_path, "indexes") == 200

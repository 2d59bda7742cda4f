"""Shell quoting of board paths used by the agent bootstrap."""

from __future__ import annotations

from host.devices.bootstrap import sh_path


def test_board_paths_keep_home_expandable_and_quote_the_rest():
    assert sh_path("~") == '"$HOME"'
    assert sh_path("~/.cache/auto sculpt") == "\"$HOME\"/'.cache/auto sculpt'"
    assert sh_path("/opt/a;rm -rf /") == "'/opt/a;rm -rf /'"

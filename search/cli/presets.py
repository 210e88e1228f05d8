"""`ftsweep spaces`: the search-space presets shipped in spaces/presets/."""

from __future__ import annotations

import argparse

import yaml
from rich.table import Table

from spaces import ConfigError, get_preset, list_presets

from . import _common


def cmd_spaces(args: argparse.Namespace) -> int:
    """List the shipped search-space presets, or show one."""
    console = _common.console(args)
    if args.action == "show":
        if not args.name:
            raise ConfigError("`ftsweep spaces show` needs a preset name", allowed=list_presets())
        space = get_preset(args.name)
        console.print(yaml.safe_dump(space.to_dict(), sort_keys=False), markup=False)
        return 0
    table = Table(title="Search-space presets (use as `space: NAME` in a sweep file)")
    table.add_column("name")
    table.add_column("params", justify="right")
    table.add_column("description")
    for name in list_presets():
        space = get_preset(name)
        table.add_row(name, str(len(space.names)), space.description)
    console.print(table)
    return 0


def _spaces_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list", help="list (default) or show NAME")
    p.add_argument("name", nargs="?", help="preset name for `show`")


SPACES = _common.Command("spaces", "list search-space presets, or show one", _spaces_arguments, cmd_spaces)

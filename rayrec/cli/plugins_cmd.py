"""``rayrec plugins``: list every loaded plugin and its components."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON.")
def plugins(as_json: bool) -> None:
    """List installed plugins and the components they register."""
    from rayrec.plugins import plugin_listing

    listing = plugin_listing()
    if as_json:
        click.echo(json.dumps(listing, indent=2, default=str))
        return
    for plugin in listing:
        origin = f" ({plugin['distribution']})" if plugin["distribution"] else ""
        click.echo(f"{plugin['name']}{origin}")
        if not plugin["components"]:
            click.echo(f"  hooks: {', '.join(plugin['hooks']) or '(none)'}")
        for component in plugin["components"]:
            description = f"  {component['description']}" if component["description"] else ""
            click.echo(f"  {component['kind']:<17} {component['name']:<20}{description}")

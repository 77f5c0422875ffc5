"""``stationctl operator-url``: the operator page's URL, with the station's token when one is needed."""

from __future__ import annotations

import json

import click

from station.cli.common import Ctx
from station.web.access import TOKEN_NAME, is_loopback, load_token


@click.command("operator-url")
@click.option("--json", "as_json", is_flag=True, help="JSON: url, token_needed, token_file")
@click.pass_obj
def operator_url(ctx: Ctx, as_json: bool) -> None:
    """Print the operator page's URL (with ?token=… when http.listen is beyond 127.0.0.1; the kiosk opens it)."""
    cfg = ctx.load()
    h = cfg.http
    data_dir = ctx.data_dir()
    host = h.listen
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"  # every address answers: the kiosk on this box uses loopback
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{h.port}/"
    needed = not is_loopback(h.listen)
    if needed:
        url += f"?token={load_token(data_dir)}"
    if as_json:
        click.echo(
            json.dumps(
                {"url": url, "token_needed": needed, "token_file": str(data_dir / TOKEN_NAME) if needed else None, "enabled": h.enabled}
            )
        )
    else:
        click.echo(url)
        if not h.enabled:
            click.echo("note: http.enabled is false: the daemon serves no operator page", err=True)

"""``nex keys``: the user's issuer and xkey public keys, to give to node operators."""

from __future__ import annotations

import click

from nex.cli import output
from nex.cli.options import GlobalOptions, with_global_options
from nex.security.keystore import UserKeys, nex_home


@click.command("keys")
@with_global_options
def keys(opts: GlobalOptions) -> None:
    """Show your issuer (an account nkey) and xkey, made in $NEX_HOME (~/.nex) on first use.

    Node operators trust the issuer with: nex node up --trusted-issuer ISSUER
    """
    home = nex_home()
    user = UserKeys.load(home, create=True)
    shown = {"issuer": user.issuer_public, "xkey": user.xkey.public, "home": str(home)}
    if opts.json:
        output.print_json(shown)
        return
    output.fields([("Issuer", shown["issuer"]), ("XKey", shown["xkey"]), ("Home", shown["home"])])

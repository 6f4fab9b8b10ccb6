"""The web dashboard of ``nex ui``: one page that shows the fleet live and acts on it.

``server`` serves the page and its API (aiohttp), ``fleet`` keeps what the page shows
current (polls and the event feed), ``sse`` streams it to the page, ``rates`` counts
function calls, ``actions`` deploys, stops and lame-ducks. The page itself is plain
HTML, CSS and JavaScript under ``static/``: nothing is fetched from the internet.
"""

from nex.ui.server import DEFAULT_HOST, DEFAULT_PORT, Dashboard

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Dashboard"]

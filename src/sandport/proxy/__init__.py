"""The edge proxy: every request to ``sandport serve`` enters here (shared/DESIGN.md §1).

    urls.py    public URL template ⇄ (sandbox, port); path forms   (pure)
    routes.py  which sandboxes and ports answer, with which auth    (pure)
    auth.py    tokens, session cookies, grants, safe redirects      (pure)
    decide.py  one request head → forward / answer / redeem        (pure)
    pages.py   the answers the proxy writes itself                  (pure)
    grants.py  browser links: minted by the control API, redeemed here
    server.py  the listener: deadlines sweep, cuts, connection limits
    client.py  one client connection: request heads, bodies, tunnels
    upstream.py  the connection to a sandbox port or the API
    response.py  one upstream response, relayed as it arrives
    exchange.py  one request and its response; the 502/504 answers
"""

"""The edge proxy: every request to ``sandport serve`` enters here (shared/DESIGN.md §1).

    urls.py    public URL template ⇄ (sandbox, port); path forms   (pure)
    routes.py  which sandboxes and ports answer, with which auth    (pure)
    auth.py    tokens, session cookies, grants, safe redirects      (pure)
    decide.py  one request head → forward / answer / redeem        (pure)
    pages.py   the answers the proxy writes itself                  (pure)
    grants.py  browser links: minted by the control API, redeemed here
    server.py  the asyncio protocols that move the bytes
"""

"""The runtime API: per-sandbox operations, authenticated with the sandbox's runtime token.

Served under ``{runtime.baseUrl}``; until the edge proxy exists that is
``<server>/runtime/<id>`` on the control API's listener.
"""

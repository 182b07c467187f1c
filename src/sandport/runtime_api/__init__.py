"""The runtime API: per-sandbox operations, authenticated with the sandbox's runtime token.

Served at ``{runtime.baseUrl}`` (the sandbox's runtime host, ``4001-<id>.<domain>``),
which the edge proxy maps onto the ``/runtime/<id>`` routes of the internal app.
"""

"""The E2B face: what the official ``e2b`` SDKs call, translated onto the services the
Hyperbrowser face uses (one set of sandboxes, processes, files and images).

- ``wire`` + ``routes``: the control API (``/v2/sandboxes``, ``/sandboxes/{id}...``,
  ``/snapshots``), errors as ``{code, message}``;
- ``connect``: the Connect protocol's framing (JSON codec);
- ``envd_wire`` + ``envd``: the in-sandbox API (E2B's envd) on the runtime API's parts,
  reached by the edge's ``49983-{id}`` host or the ``E2b-Sandbox-*`` headers;
- ``templates``: E2B's ``base`` template as a team image.
"""

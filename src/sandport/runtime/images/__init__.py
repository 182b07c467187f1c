"""Images: what a sandbox starts from, and where its layers come from and live.

This room owns every image a server holds, built-in, pulled, imported, and the one
content-addressed layer store they share; the runtime only asks it for an ``Image`` (the
layer directories to stack and the config to honour) and leases those layers per sandbox.

    store.py          ImageStore: names for a team, ensure (build, pull), import, push,
                      delete, reclaim; the built-in images (mmdebstrap)
    layerstore.py     blobs, layers keyed by diff_id, image records, leases, collection
    reference.py      image references as docker reads them (pure)
    registry.py       the Distribution API v2 client: auth, TLS, mirrors, manifests, blobs
    netguard.py       a registry the operator did not name: internet addresses only
    pull.py           manifest → platform → config → layers, shared between waiters
    transfer.py       docker save / OCI-layout imports, pushes
    layerwrite.py     the OCI layer tar of an overlay-form directory (snapshots)
    dockerfile.py     Dockerfiles parsed, expanded and checked (pure; + _dockerfile_words.py)
    dockerignore.py   .dockerignore matching as docker does it (pure)
    unpack.py         a layer tar into a directory, untrusted (+ _tar.py, _layer_stream.py)
"""

from .store import BUILTIN_PACKAGES, Image, ImageStore, mmdebstrap_command

__all__ = ["BUILTIN_PACKAGES", "Image", "ImageStore", "mmdebstrap_command"]

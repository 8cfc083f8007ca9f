"""Provenance: every picture noisecraft makes can be honestly signed and marked.

    from noisecraft.provenance import finish, write, verify, local_identity
    data = finish(image, "png", identity=local_identity())   # watermark -> parameters -> C2PA signature
    write("out.png", data)
    print(verify("out.png").text())                           # state, signer, actions, watermark, parameters

- identity.py: who signs (the user's certificate and key, or a local root + signer made on first use)
- signing.py: the C2PA manifest (actions, ingredients, watermark id) and `sign`
- watermark.py: a 48-bit invisible watermark (invisible-watermark's dwtDctSvd) carrying a 32-bit id
- output.py: `finish` (the order: pixels, encoding, signature) and the atomic `write`
- verify.py: `verify` -> `Report` (valid / untrusted / invalid / none, with reasons)
Imports of noisecraft: errors, version, pngmeta, images.
"""

from .identity import Identity, config_folder, load_identity, local_identity, root_certificate
from .output import finish, write
from .signing import Ingredient, manifest, sign
from .verify import Report, verify
from .watermark import Detection, detect, embed, fits, new_mark_id

__all__ = ["Detection", "Identity", "Ingredient", "Report", "config_folder", "detect", "embed", "finish", "fits",
           "load_identity", "local_identity", "manifest", "new_mark_id", "root_certificate", "sign", "verify", "write"]

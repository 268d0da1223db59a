"""ESC/POS pieces every executor needs, pure ``bytes <-> objects`` with no I/O: command boundaries for
paced writes (:mod:`.segment`), printer status decoding (:mod:`.status`) and printer profiles
(:mod:`.profiles`). Rendering documents to ESC/POS belongs to the cloud side (``cloud.render``).

May import: the standard library and the rest of the kernel.
"""

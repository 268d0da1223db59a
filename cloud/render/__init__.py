"""Rendering on the cloud side: the receipt document format (:mod:`.document`, which names
everything; the values in :mod:`.items`, limits and field checks in :mod:`.limits`, parsing in
:mod:`.parse`) and its conversion to ESC/POS bytes for a printer profile (:mod:`.escpos`). Needs
Pillow and qrcode, which hosts never install.

May import: the kernel.
"""

"""printfleet: a self-hostable cloud-print fleet for ESC/POS receipt and ticket printers.

This package holds what every side shares: the wire contract (:mod:`printfleet.wire`), ESC/POS
encoding, status parsing and the simulated printer (:mod:`printfleet.escpos`), and the
``printfleet`` command line (:mod:`printfleet.cli`).
"""

__version__ = "0.1.0"

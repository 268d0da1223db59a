"""The kernel: what every part of printfleet shares, importing none of them.

Lives here: the wire contract (:mod:`kernel.wire`: topics, envelope, messages, signing, job states),
the ESC/POS pieces every executor needs with no I/O (:mod:`kernel.escpos`: segmenting, status decoding,
printer profiles), the one MQTT peer session of agents, bridges and the controller's link
(:mod:`kernel.session`), the GATT profiles and identity challenge of BLE printers (:mod:`kernel.gatt`), TLS
contexts and the fleet CA (:mod:`kernel.tls`), config-file helpers (:mod:`kernel.config`), wheel checks
(:mod:`kernel.wheel`), signals as awaitables (:mod:`kernel.signals`), the simulated printer used by demos
and tests (:mod:`kernel.sim`), and the error root (:mod:`kernel.errors`).

May import: the standard library and the kernel's own dependencies (cryptography, paho/aiomqtt). Never
``broker``, ``cloud``, ``device_agent``, ``phone_bridge`` or ``printfleet``.
"""

__version__ = "0.1.0"

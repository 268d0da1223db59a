"""printfleet's composition layer: the ``printfleet`` command line, ``printfleet up`` and the demos.

It wires the parts together (``broker``, ``cloud``, ``device_agent``, ``phone_bridge``, on the
``kernel``) and nothing imports it. ``python -m printfleet agent run`` is what hosts' launchers start,
so the agent's commands import only the kernel and ``device_agent``.

May import: every package. Imported by: nothing (tests aside).
"""

from kernel import __version__

__all__ = ["__version__"]

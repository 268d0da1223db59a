"""printfleet's composition layer: the command lines, ``printfleet up`` and the demos.

It wires the parts together (``broker``, ``cloud``, ``device_agent``, ``phone_bridge``, on the
``kernel``) and nothing imports it. Three commands: ``printfleet`` (the full install: :mod:`.cli`
assembles one module per command group), ``printfleet-agent`` (:mod:`.agent_cli`: kernel and
``device_agent`` only) and ``printfleet-bridge`` (:mod:`.bridge_cli`: kernel and ``phone_bridge`` only).
``printfleet agent ...`` and ``python -m printfleet agent run`` (what hosts' systemd units and launchers
start) go straight to :mod:`.agent_cli` (:mod:`.entry`).
Errors become exit codes and one-line messages in :mod:`.cli_common`.

May import: every package. Imported by: nothing (tests aside).
"""

from kernel import __version__

__all__ = ["__version__"]

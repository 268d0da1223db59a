"""The ``printfleet`` command and ``python -m printfleet``: ``agent ...`` goes to the agent's command line.

``printfleet agent run --config F`` (what the systemd unit of a host runs) and
``python -m printfleet agent run --config F`` (what the launchers of hosts in the field start) must
work where only ``printfleet[agent]`` is installed: they go straight to :mod:`printfleet.agent_cli`,
which imports neither the controller nor its dependencies. Everything else is the full command line
(:mod:`printfleet.cli`), which says in one line to install ``printfleet[cloud]`` where it is missing.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:2] == ["agent"]:
        from printfleet.agent_cli import main as agent_main

        agent_main(sys.argv[2:], prog_name="printfleet agent")
    else:
        from printfleet.cli import main as full_main

        full_main()

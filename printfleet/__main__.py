"""``python -m printfleet ...``: the full command line, except ``agent ...``.

``python -m printfleet agent run --config F`` is what the launchers of hosts in the field start, on
hosts that may have only ``printfleet[agent]`` installed: it goes straight to the agent's command
line (:mod:`printfleet.agent_cli`), which imports neither the controller nor its dependencies.
"""

import sys


def _main() -> None:
    if sys.argv[1:2] == ["agent"]:
        from printfleet.agent_cli import main as agent_main

        agent_main(sys.argv[2:], prog_name="printfleet agent")
    else:
        from printfleet.cli import main

        main()


_main()

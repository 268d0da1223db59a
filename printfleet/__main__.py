"""``python -m printfleet ...``: the same as the ``printfleet`` command (:mod:`printfleet.entry`)."""

from printfleet.entry import main

main()

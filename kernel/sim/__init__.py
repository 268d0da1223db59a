"""The simulated ESC/POS printer (the fake at the hardware edge), used by demos and every side's tests.

:mod:`.printer` names everything in one place and is the command line (``python -m
kernel.sim.printer --pty`` runs one by hand); :mod:`.model` is the pure state machine that interprets
ESC/POS and answers status requests; :mod:`.state` its configuration and reports (faults, receipts);
:mod:`.transport` serves a model on a pty or a TCP port.

May import: the standard library and the rest of the kernel.
"""

"""The simulated ESC/POS printer (the fake at the hardware edge): the printer model that interprets
ESC/POS and answers status requests (:mod:`.printer`), and its pty/TCP transports (:mod:`.transport`).
Demos and every side's tests use it; ``python -m kernel.sim.printer --pty`` runs one by hand.

May import: the standard library and the rest of the kernel.
"""

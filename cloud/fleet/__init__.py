"""The controller's side of the fleet link, by concern.

* :mod:`~cloud.fleet.link` - the controller's MQTT session, on the kernel's peer session
  (:mod:`kernel.session`): its signed presence, inbound checks and signed instructions;
* :mod:`~cloud.fleet.inbound` - a handler per message type (a registry), in two lanes;
* :mod:`~cloud.fleet.outbox` - sends and resends jobs, commands and bridge offers until acknowledged;
* :mod:`~cloud.fleet.housekeeping` - presence deadlines, expiry, payload purges, broker refusals;
* :mod:`~cloud.fleet.context` - what they share (:class:`~cloud.fleet.context.Fleet`).

:class:`cloud.controller.Controller` puts them together.

May import: kernel, and cloud's stores (jobs, commands, presence, registry, audit, keys).
"""

"""The device agent: runs on each printer host, keeps one MQTT session with the controller, receives
jobs and maintenance commands, journals them, drives the printer over serial and reports back.

Lives here: the agent (:mod:`.agent`), its config file (:mod:`.config`), its journal
(:mod:`.journal`), one worker per printer (:mod:`.worker`) over the paced printer link
(:mod:`.printer`, :mod:`.link`), maintenance commands (:mod:`.maintenance`) and updates
(:mod:`.update`, :mod:`.versions`, :mod:`.launcher`); its errors are under
:class:`device_agent.errors.AgentError`.

May import: the kernel (and pyserial, httpx); never another part or the composition layer.
"""

"""The controller: registry, job and command stores, routing, the fleet link, the HTTP API.

* stores: :mod:`cloud.registry` (devices, printers, tokens, credentials), :mod:`cloud.bridges`,
  :mod:`cloud.jobs` (state machine, the one writer of job state, intake, routing),
  :mod:`cloud.commands`, :mod:`cloud.rollouts`, :mod:`cloud.packages`, :mod:`cloud.presence`,
  :mod:`cloud.audit`, :mod:`cloud.keys`; tables in :mod:`cloud.models`, :mod:`cloud.db`;
* :mod:`cloud.render` - documents rendered to ESC/POS per printer profile;
* :mod:`cloud.fleet` and :mod:`cloud.controller` - the MQTT side (link, inbound, outbox, housekeeping);
* :mod:`cloud.api` - the HTTP API, one router per resource;
* :mod:`cloud.service` - one process: controller, HTTP API and the (injected, :mod:`cloud.broker_port`)
  embedded broker, its tasks under :mod:`cloud.supervisor`.

May import: kernel, and broker.credentials/broker.passwords/broker.acl
"""

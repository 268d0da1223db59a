"""The fleet's MQTT broker: an embedded amqtt broker with the fleet's rules enforced, and the same
rules exported as mosquitto configuration.

Public API::

    EmbeddedBroker(listeners=[ListenerSpec(...)], credentials=StaticCredentials(...))
    export_mosquitto(out_dir, credentials) -> MosquittoFiles
    hash_password / verify_password / generate_secret   (mosquitto's $7$ hashes)

Modules: :mod:`broker.credentials` (Credential, CredentialSource, StaticCredentials, Refusal),
:mod:`broker.passwords` and :mod:`broker.acl` (mosquitto's passwd/ACL text) form the interface the
controller may import; none of them loads amqtt. :mod:`broker.policy` decides admission and topic
access; :mod:`broker.embedded` (lifecycle), :mod:`broker.fleet_broker` (the amqtt subclass),
:mod:`broker.connection` and :mod:`broker.plugins` are the amqtt side, imported on first use of
:class:`EmbeddedBroker`. :mod:`broker.mosquitto` writes mosquitto's configuration; test helpers (a
mosquitto subprocess) live in :mod:`broker.testing`.

May import: the kernel, amqtt (only in embedded, fleet_broker, connection, plugins), the standard library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .credentials import BrokerError, Credential, CredentialSource, Refusal, StaticCredentials
from .passwords import generate_secret, hash_password, verify_password

if TYPE_CHECKING:
    from .embedded import BrokerState, EmbeddedBroker
    from .listener import ListenerSpec
    from .mosquitto import MosquittoFiles, export_mosquitto

_LAZY = {
    "BrokerState": "broker.embedded",
    "EmbeddedBroker": "broker.embedded",
    "ListenerSpec": "broker.listener",
    "MosquittoFiles": "broker.mosquitto",
    "export_mosquitto": "broker.mosquitto",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BrokerError",
    "BrokerState",
    "Credential",
    "CredentialSource",
    "EmbeddedBroker",
    "ListenerSpec",
    "MosquittoFiles",
    "Refusal",
    "StaticCredentials",
    "export_mosquitto",
    "generate_secret",
    "hash_password",
    "verify_password",
]

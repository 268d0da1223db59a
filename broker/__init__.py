"""The fleet's MQTT broker: an embedded amqtt broker with the fleet's rules enforced, and the same
rules exported as mosquitto configuration.

Public API::

    EmbeddedBroker(listeners=[ListenerSpec(...)], credentials=StaticCredentials(...))
    export_mosquitto(out_dir, credentials) -> MosquittoFiles
    hash_password / verify_password / generate_secret   (mosquitto's $7$ hashes)

Test helpers (a mosquitto subprocess) live in :mod:`broker.testing`.
"""

from __future__ import annotations

from .embedded import BrokerState, EmbeddedBroker, ListenerSpec
from .mosquitto import MosquittoFiles, export_mosquitto
from .passwords import generate_secret, hash_password, verify_password
from .plugins import BrokerError, Credential, CredentialSource, Refusal, StaticCredentials

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

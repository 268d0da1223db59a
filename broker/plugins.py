"""amqtt plugins that hand amqtt's checks to :class:`broker.policy.AccessPolicy`.

amqtt calls the auth plugin once per session and the topic plugin for every SUBSCRIBE, PUBLISH and
delivery (RECEIVE); both only adapt the policy to amqtt's plugin interface.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from .credentials import BrokerError, Refusal
from .policy import AccessPolicy, TopicAction

__all__ = ["FleetAuthPlugin", "FleetTopicPlugin"]

logger = logging.getLogger(__name__)

_ACTIONS: Mapping[Action, TopicAction] = {
    Action.SUBSCRIBE: TopicAction.SUBSCRIBE,
    Action.PUBLISH: TopicAction.PUBLISH,
    Action.RECEIVE: TopicAction.RECEIVE,
}


def _policy_of(config: Any) -> AccessPolicy:
    policy = getattr(config, "policy", None)
    if not isinstance(policy, AccessPolicy):
        raise BrokerError("fleet broker plugins need an AccessPolicy in their 'policy' config")
    return policy


class FleetAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt ships no type information
    """amqtt auth plugin: accepts exactly the connections the broker's CONNECT gate admitted."""

    @dataclass
    class Config:
        policy: Any = None

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._policy = _policy_of(self.context.config)

    async def authenticate(self, *, session: Session) -> bool | None:
        return self._policy.confirm(session)


class FleetTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]  # amqtt ships no type information
    """amqtt topic plugin: the wire contract's ACLs for subscribe, publish and receive."""

    @dataclass
    class Config:
        policy: Any = None

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._policy = _policy_of(self.context.config)

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool | None:
        peer = AccessPolicy.session_peer(session)
        if peer is None or topic is None or action is None:
            return False
        allowed = AccessPolicy.may(peer, topic, _ACTIONS[action])
        if not allowed:
            logger.info("%s may not %s %s", peer, action.value, topic)
            if action is not Action.RECEIVE:
                self._policy.refused(
                    Refusal(
                        client=peer.client_id, action=action.value, target=topic, reason="outside its ACL"
                    )
                )
        return allowed

"""The envelope every message travels in: who sent it to whom, when, until when it is valid, its
body and its signature; encoding and decoding it (canonical JSON), signing and verifying it."""

from __future__ import annotations

import base64
import binascii
import builtins
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kernel.wire.bodies import ID_FIELD, Body
from kernel.wire.catalog import BODY_TYPES
from kernel.wire.keys import SigningKey
from kernel.wire.model import Field, Model, WireError, canonical
from kernel.wire.states import MsgType
from kernel.wire.topics import Peer

#: Largest envelope either side accepts; the brokers are configured with the same packet limit.
MAX_MESSAGE_BYTES = 512 * 1024

B = TypeVar("B", bound=Body)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_id() -> str:
    return uuid.uuid4().hex


class Envelope(Model, extra="forbid"):
    """Every message: who sent it to whom, when, until when it is valid, its body, its signature."""

    v: Literal[1] = 1
    type: MsgType
    id: str = ID_FIELD
    src: str = Field(max_length=80)
    dst: str = Field(max_length=80)
    seq: int = Field(ge=0)
    ts: int
    exp: int | None = None
    body: dict[str, Any]
    kid: str | None = Field(default=None, max_length=64)
    sig: str | None = Field(default=None, max_length=200)

    @classmethod
    def build(
        cls,
        body: Body,
        *,
        src: Peer | str,
        dst: Peer | str,
        seq: int,
        exp: int | None = None,
        ts: int | None = None,
        msg_id: str | None = None,
    ) -> Envelope:
        return cls(
            type=body.TYPE,
            id=msg_id or new_id(),
            src=str(src),
            dst=str(dst),
            seq=seq,
            ts=now_ms() if ts is None else ts,
            exp=exp,
            body=body.model_dump(mode="json"),
        )

    def parsed(self, body_type: builtins.type[B]) -> B:
        """The body as its model; :class:`WireError` when it does not fit."""
        if body_type.TYPE is not self.type:
            raise WireError(f"expected a {body_type.TYPE} message, got {self.type}")
        return body_type.model_validate_json(canonical(self.body), what=f"{self.type} body")

    def body_model(self) -> Body:
        return BODY_TYPES[self.type].model_validate_json(canonical(self.body), what=f"{self.type} body")

    def signing_bytes(self) -> bytes:
        return canonical(self.model_dump(mode="json", exclude={"sig"}))

    def encode(self) -> bytes:
        data = canonical(self.model_dump(mode="json", exclude_none=False))
        if len(data) > MAX_MESSAGE_BYTES:
            raise WireError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
        return data

    def expired(self, now: int) -> bool:
        return self.exp is not None and now > self.exp

    # -- signatures -------------------------------------------------------------------------

    def signed(self, key: SigningKey) -> Envelope:
        with_kid = self.model_copy(update={"kid": key.kid, "sig": None})
        sig = key.private.sign(with_kid.signing_bytes())
        return with_kid.model_copy(update={"sig": base64.b64encode(sig).decode()})

    def verify(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        """Raise :class:`WireError` unless the envelope carries a valid signature by one of ``keys``."""
        if self.sig is None or self.kid is None:
            raise WireError("unsigned message")
        pub = keys.get(self.kid)
        if pub is None:
            raise WireError(f"message signed by unknown key {self.kid!r}")
        try:
            raw = base64.b64decode(self.sig, validate=True)
            pub.verify(raw, self.signing_bytes())
        except (InvalidSignature, binascii.Error, ValueError) as exc:
            raise WireError("bad signature") from exc


def decode(data: bytes | bytearray) -> Envelope:
    """Parse and validate one envelope; :class:`WireError` with a clear reason otherwise."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    env = Envelope.model_validate_json(bytes(data), what="envelope")
    env.body_model()  # the body must fit its type as well
    return env

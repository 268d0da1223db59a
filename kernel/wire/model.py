"""The wire's value classes: frozen, strict, validated, with no compiled dependency.

A :class:`Model` declares its fields as annotated class attributes, with :func:`Field` for
constraints, and validates itself when built::

    class Will(Model):
        session: int = Field(ge=1)
        reason: str = Field(default="connection lost", max_length=64)

Validation is strict in the way the contract needs: no silent coercion (``"1"`` is not an integer,
``true`` is not one either), enums and nested models from their JSON form only when reading JSON
(:meth:`Model.model_validate_json`), tuples from JSON arrays. Unknown fields are ignored (a newer
controller may add optional fields) unless the class says ``extra="forbid"``. Every failure is a
:class:`WireError` naming the field and the reason.

The supported field types are the ones the contract uses: ``bool``, ``int``, ``float``, ``str``,
``Literal[...]``, ``StrEnum`` subclasses, nested models, ``tuple[X, ...]``, ``dict[str, X]``,
``Any`` and ``X | None``.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from enum import Enum
from typing import Any, ClassVar, Literal, Self, TypeVar, Union, get_args, get_origin

from kernel.errors import PrintfleetError

M = TypeVar("M", bound="Model")
_MISSING: Any = object()
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class WireError(PrintfleetError):
    """A message or name that does not follow the wire contract."""


class _Invalid(Exception):
    """One validation failure inside a model (internal: surfaces as :class:`WireError`)."""

    def __init__(self, loc: tuple[str | int, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc
        self.msg = msg


class FieldInfo:
    """A field's default and constraints (what :func:`Field` returns)."""

    __slots__ = (
        "default",
        "default_factory",
        "ge",
        "gt",
        "le",
        "max_length",
        "min_length",
        "pattern",
        "regex",
    )

    def __init__(
        self,
        default: Any = _MISSING,
        *,
        default_factory: typing.Callable[[], Any] | None = None,
        pattern: str | None = None,
        min_length: int | None = None,
        max_length: int | None = None,
        ge: float | None = None,
        gt: float | None = None,
        le: float | None = None,
    ) -> None:
        self.default = default
        self.default_factory = default_factory
        self.pattern = pattern
        self.regex = re.compile(pattern) if pattern is not None else None
        self.min_length = min_length
        self.max_length = max_length
        self.ge = ge
        self.gt = gt
        self.le = le

    @property
    def required(self) -> bool:
        return self.default is _MISSING and self.default_factory is None

    def make_default(self) -> Any:
        return self.default_factory() if self.default_factory is not None else self.default

    def check(self, value: Any, loc: tuple[str | int, ...]) -> None:
        """The constraints on a value already of the field's type (``None`` is not constrained)."""
        if value is None:
            return
        if self.regex is not None and isinstance(value, str) and not self.regex.fullmatch(value):
            raise _Invalid(loc, f"String should match pattern '{self.pattern}'")
        if isinstance(value, str | tuple | dict):
            what = "String" if isinstance(value, str) else "Value"
            unit = "character" if isinstance(value, str) else "item"
            if self.min_length is not None and len(value) < self.min_length:
                plural = "" if self.min_length == 1 else "s"
                raise _Invalid(loc, f"{what} should have at least {self.min_length} {unit}{plural}")
            if self.max_length is not None and len(value) > self.max_length:
                plural = "" if self.max_length == 1 else "s"
                raise _Invalid(loc, f"{what} should have at most {self.max_length} {unit}{plural}")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if self.ge is not None and not value >= self.ge:
                raise _Invalid(loc, f"Input should be greater than or equal to {self.ge}")
            if self.gt is not None and not value > self.gt:
                raise _Invalid(loc, f"Input should be greater than {self.gt}")
            if self.le is not None and not value <= self.le:
                raise _Invalid(loc, f"Input should be less than or equal to {self.le}")


def Field(
    default: Any = _MISSING,
    *,
    default_factory: typing.Callable[[], Any] | None = None,
    pattern: str | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
) -> Any:
    """A field's default and constraints (typed ``Any`` so that ``x: int = Field(ge=1)`` type-checks)."""
    return FieldInfo(
        default,
        default_factory=default_factory,
        pattern=pattern,
        min_length=min_length,
        max_length=max_length,
        ge=ge,
        gt=gt,
        le=le,
    )


def _is_classvar(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return annotation.startswith(("ClassVar", "typing.ClassVar"))
    return get_origin(annotation) is ClassVar or annotation is ClassVar


class Model:
    """A frozen value validated at construction; see the module docstring."""

    #: The fields in declaration order (base classes first), with their defaults and constraints.
    model_fields: ClassVar[dict[str, FieldInfo]] = {}
    #: ``"ignore"``: unknown fields are dropped; ``"forbid"``: they are an error.
    model_extra: ClassVar[Literal["ignore", "forbid"]] = "ignore"
    _field_types: ClassVar[dict[str, Any] | None] = None

    def __init_subclass__(cls, *, extra: Literal["ignore", "forbid"] | None = None, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if extra is not None:
            cls.model_extra = extra
        fields = dict(cls.model_fields)
        for name, annotation in inspect.get_annotations(cls).items():
            if _is_classvar(annotation) or name.startswith("_"):
                continue
            value = cls.__dict__.get(name, _MISSING)
            info = value if isinstance(value, FieldInfo) else FieldInfo(value)
            fields[name] = info
            if isinstance(value, FieldInfo):
                delattr(cls, name)
        cls.model_fields = fields
        cls._field_types = None  # resolved on first use: annotations may name classes defined later

    @classmethod
    def _types(cls) -> dict[str, Any]:
        resolved = cls.__dict__.get("_field_types")
        if resolved is None:
            hints = typing.get_type_hints(cls)
            resolved = {name: hints[name] for name in cls.model_fields}
            cls._field_types = resolved
        return resolved

    # -- building ---------------------------------------------------------------------------------

    def __init__(self, **data: Any) -> None:
        try:
            values = self._values(data, json_mode=False, loc=())
        except _Invalid as exc:
            raise _wire_error(type(self).__name__, exc) from None
        object.__setattr__(self, "__dict__", values)

    @classmethod
    def _values(
        cls, data: typing.Mapping[str, Any], *, json_mode: bool, loc: tuple[str | int, ...]
    ) -> dict[str, Any]:
        types_ = cls._types()
        out: dict[str, Any] = {}
        for name, info in cls.model_fields.items():
            if name in data:
                value = _convert(types_[name], data[name], json_mode, (*loc, name))
                info.check(value, (*loc, name))
                out[name] = value
            elif info.required:
                raise _Invalid((*loc, name), "Field required")
            else:
                out[name] = info.make_default()
        if cls.model_extra == "forbid":
            for key in data:
                if key not in cls.model_fields:
                    raise _Invalid((*loc, key), "Extra inputs are not permitted")
        return out

    @classmethod
    def _build(cls, data: Any, *, json_mode: bool, loc: tuple[str | int, ...]) -> Self:
        if not isinstance(data, dict):
            raise _Invalid(loc, "Input should be an object")
        for key in data:
            if type(key) is not str:
                raise _Invalid((*loc, str(key)), "Keys should be strings")
        obj = object.__new__(cls)
        object.__setattr__(obj, "__dict__", cls._values(data, json_mode=json_mode, loc=loc))
        return obj

    @classmethod
    def model_validate_json(cls, data: bytes | bytearray | str, *, what: str | None = None) -> Self:
        """Parse JSON text into this model; :class:`WireError` (``invalid {what}: field: reason``)."""
        what = what or cls.__name__
        try:
            return cls._build(parse_json(data), json_mode=True, loc=())
        except _Invalid as exc:
            raise _wire_error(what, exc) from None

    def model_copy(self, *, update: typing.Mapping[str, Any] | None = None) -> Self:
        """A shallow copy with some fields replaced (not validated again, as in pydantic)."""
        obj = object.__new__(type(self))
        object.__setattr__(obj, "__dict__", {**self.__dict__, **(update or {})})
        return obj

    def model_dump(
        self,
        *,
        mode: Literal["python", "json"] = "python",
        exclude: typing.Container[str] = (),
        exclude_none: bool = False,
    ) -> dict[str, Any]:
        """The fields as a dict; ``mode="json"`` gives only JSON types (enum values, lists)."""
        as_json = mode == "json"
        out: dict[str, Any] = {}
        for name in self.model_fields:
            if name in exclude:
                continue
            value = self.__dict__[name]
            if exclude_none and value is None:
                continue
            out[name] = _dump(value, as_json)
        return out

    def model_dump_json(self) -> str:
        """The fields as compact JSON text, in declaration order (what a journal stores)."""
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False)

    # -- a frozen value ---------------------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self), *self.__dict__.values()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({inner})"


def _wire_error(what: str, exc: _Invalid) -> WireError:
    loc = ".".join(str(p) for p in exc.loc) or "(root)"
    return WireError(f"invalid {what}: {loc}: {exc.msg}")


def _convert(tp: Any, value: Any, json_mode: bool, loc: tuple[str | int, ...]) -> Any:
    """``value`` as type ``tp`` under the strict rules, or :class:`_Invalid`."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, json_mode, loc)
        raise TypeError(f"unsupported union on the wire: {tp!r}")
    if origin is Literal:
        allowed = get_args(tp)
        for option in allowed:
            if type(value) is type(option) and value == option:
                return option
        listed = ", ".join(repr(a) for a in allowed[:-1])
        choices = f"{listed} or {allowed[-1]!r}" if listed else repr(allowed[-1])
        raise _Invalid(loc, f"Input should be {choices}")
    if tp is bool:
        if type(value) is bool:
            return value
        raise _Invalid(loc, "Input should be a valid boolean")
    if tp is int:
        if type(value) is int:
            return value
        raise _Invalid(loc, "Input should be a valid integer")
    if tp is float:
        if type(value) is float:
            return value
        if type(value) is int:
            return float(value)
        raise _Invalid(loc, "Input should be a valid number")
    if tp is str:
        if type(value) is str:
            return value
        raise _Invalid(loc, "Input should be a valid string")
    if isinstance(tp, type) and issubclass(tp, Enum):
        return _convert_enum(tp, value, json_mode, loc)
    if isinstance(tp, type) and issubclass(tp, Model):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return tp._build(value, json_mode=json_mode, loc=loc)
        raise _Invalid(
            loc, "Input should be an object" if json_mode else f"Input should be an instance of {tp.__name__}"
        )
    if origin is tuple:
        (item, *rest) = get_args(tp)
        if rest != [Ellipsis]:
            raise TypeError(f"unsupported tuple on the wire: {tp!r}")
        if not (isinstance(value, tuple) or (json_mode and isinstance(value, list))):
            raise _Invalid(
                loc, "Input should be a valid array" if json_mode else "Input should be a valid tuple"
            )
        return tuple(_convert(item, v, json_mode, (*loc, i)) for i, v in enumerate(value))
    if origin is dict:
        key_t, value_t = get_args(tp)
        if key_t is not str:
            raise TypeError(f"unsupported dict on the wire: {tp!r}")
        if not isinstance(value, dict):
            raise _Invalid(
                loc, "Input should be an object" if json_mode else "Input should be a valid dictionary"
            )
        out = {}
        for k, v in value.items():
            if type(k) is not str:
                raise _Invalid((*loc, str(k)), "Keys should be strings")
            out[k] = _convert(value_t, v, json_mode, (*loc, k))
        return out
    raise TypeError(f"unsupported type on the wire: {tp!r}")


def _convert_enum(tp: type[Enum], value: Any, json_mode: bool, loc: tuple[str | int, ...]) -> Enum:
    if isinstance(value, tp):
        return value
    if json_mode and type(value) is str:
        try:
            return tp(value)
        except ValueError:
            pass
    if not json_mode:
        raise _Invalid(loc, f"Input should be an instance of {tp.__name__}")
    members = [repr(m.value) for m in tp]
    raise _Invalid(loc, f"Input should be {', '.join(members[:-1])} or {members[-1]}")


def _dump(value: Any, as_json: bool) -> Any:
    if isinstance(value, Model):
        return value.model_dump(mode="json" if as_json else "python")
    if isinstance(value, Enum):
        return value.value if as_json else value
    if isinstance(value, tuple):
        items = [_dump(v, as_json) for v in value]
        return items if as_json else tuple(items)
    if isinstance(value, list):
        return [_dump(v, as_json) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v, as_json) for k, v in value.items()}
    return value


def canonical(obj: Any) -> bytes:
    """The one JSON form that is signed and sent: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def parse_json(data: bytes | bytearray | str) -> Any:
    """Strict JSON (UTF-8, no NaN or Infinity, no lone surrogate); :class:`_Invalid` otherwise."""
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
        obj = json.loads(text, parse_constant=_no_constant)
        if _SURROGATE_ESCAPE.search(text):
            canonical(obj)  # a lone surrogate cannot be encoded: refuse it now, not when signing
    except (UnicodeDecodeError, UnicodeEncodeError) as exc:
        raise _Invalid((), f"Invalid JSON: {exc.reason}") from None
    except (ValueError, RecursionError) as exc:
        raise _Invalid((), f"Invalid JSON: {exc}") from None
    return obj


def validate_model(model: type[M], data: Any, what: str) -> M:
    """Validate stored or received data (JSON bytes or JSON-like values) into a wire model.

    :class:`WireError` (``invalid {what}: field: reason``) when it does not fit.
    """
    raw = data if isinstance(data, bytes | bytearray) else canonical(data)
    return model.model_validate_json(raw, what=what)

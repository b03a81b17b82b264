"""The base every API model stands on, and the CEL rules that travel with it.

A cross-field rule is written once, as a :class:`Rule`: the CEL expression the apiserver
evaluates (``x-kubernetes-validations``), the message both validators print, and the same
check in Python so that an object the operator parses and an object the apiserver admits obey
one contract. Keeping the three side by side is what stops the two validators drifting apart;
the integration tests prove they agree on every invalid example and on generated specs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

#: The reasons the apiserver accepts on a validation rule (``x-kubernetes-validations[].reason``).
RuleReason = Literal[
    "FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"
]

#: Marks a pattern whose mismatch the CRD reports with this message (see :class:`Format`).
FORMAT_MESSAGE = "x-recsys-format-message"

#: Schema keys that mark a list as keyed; the Python side enforces the same uniqueness.
LIST_TYPE = "x-kubernetes-list-type"
LIST_MAP_KEYS = "x-kubernetes-list-map-keys"


@dataclass(frozen=True)
class Rule:
    """One cross-field rule: CEL for the apiserver, ``check`` for Python, one message for both.

    ``field_path`` (relative to the object the rule sits on, e.g. ``.steps``) makes the
    apiserver report the error at the field the user has to change rather than at the parent.
    """

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None
    reason: RuleReason | None = None
    message_expression: str | None = None

    def to_schema(self) -> dict[str, str]:
        out = {"rule": self.cel, "message": self.message}
        if self.message_expression:
            out["messageExpression"] = self.message_expression
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


class ApiModel(BaseModel):
    """A part of a spec or status: camelCase on the wire, strict, unknown fields refused.

    Strict so that Python accepts exactly what the apiserver accepts (``"5"`` is not an
    integer there either); frozen because the spec belongs to the user and the operator only
    reads it.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="forbid",
        strict=True,
        frozen=True,
    )

    #: Cross-field rules of this object; see :class:`Rule`.
    __rules__: ClassVar[tuple[Rule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema_in: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(schema_in)
        target = handler.resolve_ref_schema(schema)
        if cls.__rules__:
            target["x-kubernetes-validations"] = [r.to_schema() for r in cls.__rules__]
        return schema

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in type(self).__rules__:
            if not rule.check(self):
                where = (rule.field_path or "").lstrip(".")
                raise ValueError(f"{where}: {rule.message}" if where else rule.message)
        return self

    def to_k8s(self) -> dict[str, Any]:
        """The wire form: camelCase keys, no unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


@dataclass(frozen=True)
class ListMap:
    """Marks a list as keyed by ``keys`` (wire names) and refuses duplicate keys in Python.

    The apiserver refuses duplicates of a list-map on its own (and server-side apply merges
    such lists entry by entry); this gives the models the same behaviour.
    """

    keys: tuple[str, ...]

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._unique, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out = handler(schema)
        out[LIST_TYPE] = "map"
        out[LIST_MAP_KEYS] = list(self.keys)
        return out

    def _unique(self, items: list[Any]) -> list[Any]:
        seen: set[tuple[Any, ...]] = set()
        for index, item in enumerate(items):
            key = tuple(getattr(item, _attribute(item, k)) for k in self.keys)
            if key in seen:
                shown = key[0] if len(key) == 1 else key
                raise ValueError(
                    f"[{index}]: duplicate {'/'.join(self.keys)} {shown!r}; "
                    "each entry needs its own"
                )
            seen.add(key)
        return items


@dataclass(frozen=True)
class ListSet:
    """Marks a list of scalars as a set and refuses duplicates in Python, as the apiserver does."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._unique, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out = handler(schema)
        out[LIST_TYPE] = "set"
        return out

    @staticmethod
    def _unique(items: list[Any]) -> list[Any]:
        seen: set[Any] = set()
        for index, item in enumerate(items):
            if item in seen:
                raise ValueError(f"[{index}]: duplicate value {item!r}; list each value once")
            seen.add(item)
        return items


@dataclass(frozen=True)
class Format:
    """A string format whose mismatch is explained, not just reported.

    A failed OpenAPI ``pattern`` makes the apiserver print the regular expression, which for a
    cron schedule is a wall of brackets. The CRD generator turns a Format into a CEL
    ``self.matches(...)`` rule carrying ``message`` instead; Python raises the same message.
    """

    pattern: str
    message: str

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out = handler(schema)
        out["pattern"] = self.pattern
        out[FORMAT_MESSAGE] = self.message
        return out

    def _check(self, value: str) -> str:
        if not re.fullmatch(self.pattern, value):
            raise ValueError(f"{value!r}: {self.message}")
        return value


def _attribute(item: Any, wire_name: str) -> str:
    """The Python attribute behind a camelCase wire name."""
    for name, info in type(item).model_fields.items():
        if (info.alias or name) == wire_name:
            return str(name)
    raise KeyError(wire_name)

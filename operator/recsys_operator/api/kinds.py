"""What the generator and the operator need to know about a kind besides its schema: its
names, how kubectl shows it, and the models that parse it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from recsys_operator import GROUP, VERSION
from recsys_operator.api.base import ApiModel

API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "recsys"


@dataclass(frozen=True)
class PrinterColumn:
    """A column of ``kubectl get`` (``additionalPrinterColumns``)."""

    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    description: str
    priority: int = 0

    def to_crd(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "jsonPath": self.json_path,
            "description": self.description,
        }
        if self.priority:
            out["priority"] = self.priority
        return out


AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since creation.")


@dataclass(frozen=True)
class KindInfo:
    """A kind's names and models: everything besides the schema that goes into its CRD."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    description: str
    object_model: type[ApiObject]
    spec_model: type[ApiModel]
    status_model: type[ApiModel]
    printer_columns: tuple[PrinterColumn, ...]
    selectable_fields: tuple[str, ...] = ()
    #: Forbid any change of ``spec`` after creation (``self == oldSelf``).
    immutable_spec: bool = False
    categories: tuple[str, ...] = (CATEGORY,)
    group: str = GROUP
    version: str = VERSION

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"


class ObjectMeta(BaseModel):
    """The parts of ``metadata`` the operator reads; anything else is kept as it came."""

    model_config = ConfigDict(populate_by_name=True, extra="allow", frozen=True)

    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = Field(default=None, alias="resourceVersion")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    creation_timestamp: str | None = Field(default=None, alias="creationTimestamp")
    deletion_timestamp: str | None = Field(default=None, alias="deletionTimestamp")


class ApiObject(BaseModel):
    """A whole object as the apiserver returns it: ``Kind.model_validate(obj)`` parses a
    live object (or a kopf body converted with ``dict(body)``)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    api_version: Literal["recsys.dev/v1alpha1"] = Field(
        default="recsys.dev/v1alpha1", alias="apiVersion"
    )
    metadata: ObjectMeta
    spec: ApiModel
    status: ApiModel | None = None

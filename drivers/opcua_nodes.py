"""OPC UA configuration: signals, security, node references, and how values become samples.

Node references: a NodeId string (`ns=2;s=Line3.Welder2.Busy`, `ns=2;i=1001`, `ns=2;g=<guid>`,
`ns=2;b=<base64>`, `i=2258`), or a browse path from the Objects folder
(`/Objects/2:Line3/2:Welder2/2:Busy`, each element `ns:BrowseName`, ns 0 if omitted).
Both are parsed when the driver is built (syntax errors are `ConfigError`s naming the signal)
and resolved against the server at every connect.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from asyncua import Client, ua

from drivers.base import ConfigError, Quality
from drivers.settings import OpcUaSecurity, OpcUaSignal

POLICIES = ("None", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss")
MODES = ("None", "Sign", "SignAndEncrypt")


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A parsed node reference: a NodeId, or browse path elements below the Objects folder."""

    text: str
    node_id: ua.NodeId | None = None
    path: tuple[ua.QualifiedName, ...] = ()


def parse_node(signal: str, text: str) -> NodeRef:
    """Parse a node reference; ConfigError names the signal and what is expected."""
    where = f"signal {signal!r}: node {text!r}"
    stripped = text.strip()
    if stripped.startswith("/"):
        parts = stripped.split("/")[1:]
        if len(parts) < 2 or parts[0] not in ("Objects", "0:Objects") or not all(parts):
            raise ConfigError(
                f"{where}: expected a browse path like /Objects/2:Line3/2:Busy"
            )
        names = []
        for part in parts[1:]:
            ns, sep, name = part.partition(":")
            if not sep:
                ns, name = "0", part
            if not ns.isdigit() or not name:
                raise ConfigError(f"{where}: path element {part!r}: expected ns:Name")
            names.append(ua.QualifiedName(name, int(ns)))
        return NodeRef(stripped, path=tuple(names))
    try:
        node_id = ua.NodeId.from_string(stripped)
    except (ua.UaStringParsingError, ValueError) as error:
        raise ConfigError(
            f"{where}: expected a NodeId (ns=2;s=Name, ns=2;i=42, ns=2;g=GUID) or a browse path "
            f"(/Objects/2:Line3/2:Busy)"
        ) from error
    return NodeRef(stripped, node_id=node_id)


def relative_path(ref: NodeRef) -> ua.RelativePath:
    """The RelativePath of a browse path (hierarchical references, subtypes included)."""
    elements = [
        ua.RelativePathElement(
            ReferenceTypeId=ua.NodeId(ua.Int32(ua.ObjectIds.HierarchicalReferences)),
            IsInverse=cast(ua.Boolean, False),  # asyncua types Boolean as its own class
            IncludeSubtypes=cast(ua.Boolean, True),
            TargetName=name,
        )
        for name in ref.path
    ]
    return ua.RelativePath(Elements=elements)


def check_signal(signal: OpcUaSignal) -> NodeRef:
    """Check one signal's settings and parse its node."""
    if not signal.name:
        raise ConfigError(f"signal with node {signal.node!r}: empty name")
    if not signal.interval_s > 0:
        raise ConfigError(f"signal {signal.name!r}: interval {signal.interval_s}: expected > 0")
    if signal.sampling_s is not None and signal.sampling_s < 0:
        raise ConfigError(f"signal {signal.name!r}: sampling {signal.sampling_s}: expected >= 0")
    if signal.queue_size < 1:
        raise ConfigError(f"signal {signal.name!r}: queue_size {signal.queue_size}: expected >= 1")
    if signal.deadband is not None and signal.deadband < 0:
        raise ConfigError(f"signal {signal.name!r}: deadband {signal.deadband}: expected >= 0")
    return parse_node(signal.name, signal.node)


def check_security(where: str, security: OpcUaSecurity) -> None:
    if security.policy not in POLICIES:
        raise ConfigError(f"{where}: security policy {security.policy!r}: expected one of "
                          f"{', '.join(POLICIES)}")
    if security.mode not in MODES:
        raise ConfigError(f"{where}: security mode {security.mode!r}: expected one of "
                          f"{', '.join(MODES)}")
    if (security.policy == "None") != (security.mode == "None"):
        raise ConfigError(
            f"{where}: security: policy {security.policy} with mode {security.mode}: "
            "None goes with None; Sign and SignAndEncrypt need a policy"
        )
    if security.policy != "None" and not (security.certificate and security.private_key):
        raise ConfigError(f"{where}: security {security.policy}: needs certificate and "
                          "private_key files")


async def resolve_nodes(client: Client, refs: list[NodeRef]) -> list[ua.NodeId | str]:
    """Per reference, the server's NodeId, or the status name saying why it is missing.

    NodeIds are checked with one Read of their NodeClass; browse paths are translated with one
    TranslateBrowsePathsToNodeIds from the Objects folder.
    """
    out: list[ua.NodeId | str] = ["" for _ in refs]
    by_id = [(n, ref.node_id) for n, ref in enumerate(refs) if ref.node_id is not None]
    by_path = [(n, ref) for n, ref in enumerate(refs) if ref.node_id is None]
    if by_id:
        classes = await client.read_attributes([client.get_node(node) for _, node in by_id],
                                               ua.AttributeIds.NodeClass)
        for (n, node_id), value in zip(by_id, classes, strict=True):
            code = value.StatusCode
            out[n] = code.name if code is not None and not code.is_good() else node_id
    if by_path:
        objects = ua.NodeId(ua.Int32(ua.ObjectIds.ObjectsFolder))
        results = await client.translate_browsepaths(
            objects, [relative_path(ref) for _, ref in by_path])
        for (n, _), result in zip(by_path, results, strict=True):
            if not result.StatusCode.is_good() or not result.Targets:
                out[n] = result.StatusCode.name
                continue
            target = result.Targets[0].TargetId
            out[n] = ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)
    return out


# The mapping's value types as OPC UA built-in DataTypes (namespace 0 identifiers).
_DATA_TYPE = {"bool": 1, "int16": 4, "uint16": 5, "int32": 6, "uint32": 7, "int64": 8,
              "uint64": 9, "float32": 10, "float64": 11, "string": 12}
_BUILT_IN = {1: "Boolean", 2: "SByte", 3: "Byte", 4: "Int16", 5: "UInt16", 6: "Int32",
             7: "UInt32", 8: "Int64", 9: "UInt64", 10: "Float", 11: "Double", 12: "String",
             13: "DateTime", 15: "ByteString"}
OPCUA_TYPES = tuple(_DATA_TYPE)


async def data_type_problems(client: Client,
                             typed: list[tuple[str, ua.NodeId]]) -> list[str | None]:
    """Per (expected type, node), why the node's DataType is not the expected one, or None.

    One Read of the DataType attributes. Only built-in DataTypes are judged: a node of a
    subtype, an enumeration or an abstract type (BaseDataType, Number) is not refused here.
    """
    values = await client.read_attributes([client.get_node(node) for _, node in typed],
                                           ua.AttributeIds.DataType)
    out: list[str | None] = []
    for (expected, _), value in zip(typed, values, strict=True):
        found = value.Value.Value if value.Value is not None else None
        ident = None
        if isinstance(found, ua.NodeId) and found.NamespaceIndex == 0:
            ident = found.Identifier
        name = _BUILT_IN.get(ident) if isinstance(ident, int) else None
        if name is None or ident == _DATA_TYPE[expected]:
            out.append(None)
        else:
            out.append(f"the server's DataType is {name}, the mapping expects {expected}")
    return out


# --- values ----------------------------------------------------------------------------------


def quality_of(status: ua.StatusCode | None) -> tuple[Quality, str | None]:
    """Good / uncertain / bad by the status code's severity bits, with the status name."""
    if status is None:
        return Quality.GOOD, None
    severity = status.value >> 30
    if severity == 0:
        return Quality.GOOD, None
    name = status.name
    if severity == 1:
        return Quality.UNCERTAIN, f"opcua_status: {name}"
    return Quality.BAD, f"opcua_status: {name}"


def epoch_of(stamp: datetime | None, fallback: float) -> float:
    """UTC epoch seconds of an OPC UA timestamp (naive means UTC); `fallback` if missing."""
    if stamp is None or stamp.year < 1980:
        return fallback
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def plain(value: object) -> bool | int | float | str | None:
    """A Sample value from a decoded Variant value (other types as their text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, ua.LocalizedText):
        return value.Text
    return str(value)

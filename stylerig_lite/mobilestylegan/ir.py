"""A small reader of OpenVINO IR files (``.xml`` graph + ``.bin`` weights), without OpenVINO.

An OpenVINO IR (version 10/11) is two files:

* ``name.xml``: ``<net><layers>`` with one ``<layer id name type version>`` per op, its attributes
  in ``<data .../>``, its input and output ports with their shapes (``<port id><dim>...``), and
  ``<edges>`` with one ``<edge from-layer from-port to-layer to-port/>`` per tensor flowing between
  two ports;
* ``name.bin``: the raw little-endian bytes of every ``Const`` layer, which names its slice with
  ``<data element_type="f32" shape="64, 3, 3" offset="..." size="..."/>``.

:func:`read_ir` parses both into an :class:`IRGraph` (ops in topological order, their attributes,
edges and constants as numpy arrays) using only ``xml.etree`` and ``numpy.frombuffer``; the networks
of :mod:`~stylerig_lite.mobilestylegan.networks` take their weights from it. Every constant's slice
is checked against the ``.bin`` file's size, so a truncated ``.bin`` fails with a clear error.
``xml.etree`` is not hardened against hostile XML: read files you trust (the loader checks the
published sha256 of the files before it parses them).
"""

from __future__ import annotations

import dataclasses
import heapq
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

__all__ = [
    "ELEMENT_TYPES",
    "IRError",
    "IRGraph",
    "IRLayer",
    "IRPort",
    "read_ir",
]

#: OpenVINO element type -> numpy dtype (little-endian), for the ``Const`` layers we can read.
ELEMENT_TYPES: Dict[str, np.dtype] = {
    "f64": np.dtype("<f8"), "f32": np.dtype("<f4"), "f16": np.dtype("<f2"),
    "i64": np.dtype("<i8"), "i32": np.dtype("<i4"), "i16": np.dtype("<i2"), "i8": np.dtype("i1"),
    "u64": np.dtype("<u8"), "u32": np.dtype("<u4"), "u16": np.dtype("<u2"), "u8": np.dtype("u1"),
    "boolean": np.dtype("?"),
}


class IRError(ValueError):
    """An IR file that cannot be read: malformed XML, unknown element type, a slice outside the ``.bin``."""


@dataclasses.dataclass(frozen=True)
class IRPort:
    """One input or output port of a layer: its id, shape (``()`` for a scalar) and precision (``FP32``...)."""

    id: int
    shape: Tuple[int, ...]
    precision: Optional[str] = None


@dataclasses.dataclass
class IRLayer:
    """One op of the graph.

    ``attrs`` are the ``<data>`` attributes as strings (``strides="1, 1"``); :meth:`ints` parses a
    comma-separated one. ``sources`` lists, per input port in port order, the ``(layer id, port id)``
    that feeds it (filled from the edges by :func:`read_ir`).
    """

    id: int
    name: str
    type: str
    version: str
    attrs: Dict[str, str]
    inputs: List[IRPort]
    outputs: List[IRPort]
    sources: List[Tuple[int, int]] = dataclasses.field(default_factory=list)

    def ints(self, key: str) -> Tuple[int, ...]:
        """A comma-separated integer attribute (``"1, 1"`` -> ``(1, 1)``; ``""`` -> ``()``)."""
        value = self.attrs[key].strip()
        return tuple(int(v) for v in value.split(",") if v.strip()) if value else ()

    @property
    def output_shape(self) -> Tuple[int, ...]:
        """The shape of output port 0 (every op of the MobileStyleGAN graphs has one output)."""
        return self.outputs[0].shape


@dataclasses.dataclass
class IRGraph:
    """A parsed IR: ``layers`` by id in topological order, ``edges``, and ``constants`` by layer id."""

    name: str
    version: str
    layers: Dict[int, IRLayer]
    edges: List[Tuple[int, int, int, int]]
    constants: Dict[int, np.ndarray]

    def ops(self, *types: str) -> List[IRLayer]:
        """The layers in topological order, optionally only those of the given op types."""
        return [layer for layer in self.layers.values() if not types or layer.type in types]

    def by_name(self, name: str) -> IRLayer:
        for layer in self.layers.values():
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r} in the IR graph {self.name!r}")

    def source(self, layer: Union[IRLayer, int], port: int = 0) -> IRLayer:
        """The layer that feeds input ``port`` of ``layer``."""
        layer = self.layers[layer] if isinstance(layer, int) else layer
        return self.layers[layer.sources[port][0]]

    def const(self, layer: Union[IRLayer, int], port: int = 0) -> np.ndarray:
        """The constant feeding input ``port`` of ``layer`` (or, with a ``Const`` layer, its own value).

        Follows a ``Convert`` (a compressed f16 weight decompressed to f32) if there is one.
        """
        layer = self.layers[layer] if isinstance(layer, int) else layer
        if layer.type != "Const":
            layer = self.source(layer, port)
        if layer.type == "Convert":
            return self.const(layer, 0).astype(_numpy_type(layer.attrs["destination_type"]))
        if layer.id not in self.constants:
            raise IRError(f"input {port} of the op is {layer.type} {layer.name!r}, not a constant")
        return self.constants[layer.id]

    def consumers(self, layer: Union[IRLayer, int]) -> List[IRLayer]:
        """The layers reading any output of ``layer``, in topological order."""
        layer_id = layer if isinstance(layer, int) else layer.id
        ids = {to for frm, _, to, _ in self.edges if frm == layer_id}
        return [self.layers[i] for i in self.layers if i in ids]

    def parameters(self) -> List[IRLayer]:
        return self.ops("Parameter")

    def results(self) -> List[IRLayer]:
        return self.ops("Result")

    def summary(self) -> Dict[str, int]:
        """Op type -> count, most frequent first."""
        counts: Dict[str, int] = {}
        for layer in self.layers.values():
            counts[layer.type] = counts.get(layer.type, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def __iter__(self) -> Iterator[IRLayer]:
        return iter(self.layers.values())

    def __len__(self) -> int:
        return len(self.layers)


def _numpy_type(element_type: str) -> np.dtype:
    try:
        return ELEMENT_TYPES[element_type.lower()]
    except KeyError:
        raise IRError(f"unsupported element type {element_type!r}; known: {sorted(ELEMENT_TYPES)}") from None


def _parse_shape(text: Optional[str]) -> Tuple[int, ...]:
    if text is None or not text.strip():
        return ()
    return tuple(int(v) for v in text.split(","))


def _ports(element: Optional[ET.Element]) -> List[IRPort]:
    if element is None:
        return []
    return [IRPort(int(port.get("id")), tuple(int(d.text) for d in port.findall("dim")), port.get("precision"))
            for port in element.findall("port")]


def _topological(layers: Dict[int, IRLayer], edges: List[Tuple[int, int, int, int]]) -> List[int]:
    """Kahn's algorithm, ties broken by layer id (the order the converter wrote)."""
    indegree = {i: 0 for i in layers}
    children: Dict[int, List[int]] = {i: [] for i in layers}
    for frm, _, to, _ in edges:
        indegree[to] += 1
        children[frm].append(to)
    ready = [i for i, d in indegree.items() if d == 0]
    heapq.heapify(ready)
    order: List[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for child in children[i]:
            indegree[child] -= 1
            if indegree[child] == 0:
                heapq.heappush(ready, child)
    if len(order) != len(layers):
        raise IRError("the IR graph has a cycle")
    return order


def read_ir(xml_path: Union[str, os.PathLike], bin_path: Optional[Union[str, os.PathLike]] = None) -> IRGraph:
    """Parse an OpenVINO IR: ``xml_path`` and its weights ``bin_path`` (default: same name, ``.bin``).

    Returns an :class:`IRGraph` whose ``constants`` are read-only numpy views into the ``.bin``
    bytes, shaped as the XML says. Raises :class:`IRError` on malformed XML, an edge to an unknown
    layer or port, an unknown element type, or a constant whose slice lies outside the ``.bin``
    (a truncated download) or whose ``size`` disagrees with its shape and type.
    """
    xml_path = Path(xml_path)
    bin_path = Path(bin_path) if bin_path is not None else xml_path.with_suffix(".bin")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as error:
        raise IRError(f"{xml_path} is not a readable IR .xml file: {error}") from None
    if root.tag != "net" or root.find("layers") is None:
        raise IRError(f"{xml_path} is not an OpenVINO IR: expected <net><layers>..., found <{root.tag}>")
    blob = bin_path.read_bytes() if bin_path.exists() else b""

    layers: Dict[int, IRLayer] = {}
    constants: Dict[int, np.ndarray] = {}
    for element in root.find("layers").findall("layer"):
        data = element.find("data")
        attrs = dict(data.attrib) if data is not None else {}
        layer = IRLayer(id=int(element.get("id")), name=element.get("name", ""), type=element.get("type", ""),
                        version=element.get("version", ""), attrs=attrs, inputs=_ports(element.find("input")),
                        outputs=_ports(element.find("output")))
        if layer.id in layers:
            raise IRError(f"{xml_path}: two layers with id {layer.id}")
        layers[layer.id] = layer
        if layer.type == "Const":
            dtype = _numpy_type(attrs.get("element_type", ""))
            shape = _parse_shape(attrs.get("shape"))
            offset, size = int(attrs["offset"]), int(attrs["size"])
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if count * dtype.itemsize != size:
                raise IRError(f"{xml_path}: constant {layer.name!r} of shape {shape} and type {attrs['element_type']} "
                              f"needs {count * dtype.itemsize} bytes, the XML says {size}")
            if offset < 0 or offset + size > len(blob):
                raise IRError(f"{bin_path} is too short ({len(blob):,} bytes) for constant {layer.name!r} at bytes "
                              f"{offset:,}..{offset + size:,}: the file is truncated or belongs to another .xml")
            constants[layer.id] = np.frombuffer(blob, dtype=dtype, count=count, offset=offset).reshape(shape)

    edges: List[Tuple[int, int, int, int]] = []
    edges_element = root.find("edges")
    for edge in (edges_element.findall("edge") if edges_element is not None else []):
        frm, frm_port, to, to_port = (int(edge.get(k)) for k in ("from-layer", "from-port", "to-layer", "to-port"))
        if frm not in layers or to not in layers:
            raise IRError(f"{xml_path}: an edge {frm}:{frm_port} -> {to}:{to_port} names an unknown layer")
        edges.append((frm, frm_port, to, to_port))
    for layer in layers.values():
        ports = {p.id: i for i, p in enumerate(layer.inputs)}
        feeds = sorted((ports.get(to_port, to_port), frm, frm_port)
                       for frm, frm_port, to, to_port in edges if to == layer.id)
        if len(feeds) != len(layer.inputs):
            raise IRError(f"{xml_path}: layer {layer.name!r} has {len(layer.inputs)} input ports but "
                          f"{len(feeds)} incoming edges")
        layer.sources = [(frm, frm_port) for _, frm, frm_port in feeds]

    order = _topological(layers, edges)
    return IRGraph(name=root.get("name", xml_path.stem), version=root.get("version", ""),
                   layers={i: layers[i] for i in order}, edges=edges, constants=constants)

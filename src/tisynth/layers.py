"""The datasets' layers (kedro-viz ``metadata.kedro-viz.layer``) checked against the pipelines.

Layers follow Kedro's data-engineering convention, in this order::

    raw → intermediate → primary → feature → model_input → models → model_output → reporting

and follow the data: along every edge of every pipeline (a node reads dataset *a* and writes
dataset *b*) the layer of *b* is the layer of *a* or a later one. kedro-viz orders its layer
bands by the same relation and turns the layer view off when the relation has a cycle.
``docs/architecture.md`` says what each layer holds in this project.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from itertools import pairwise
from typing import Any

from tisynth.errors import TisynthError

LAYERS: tuple[str, ...] = ("raw", "intermediate", "primary", "feature", "model_input", "models",
                           "model_output", "reporting")
"""Kedro's data-engineering layers, earliest first."""


class LayerError(TisynthError, ValueError):
    """Layers that do not follow the data: a cycle, an edge against the order, an unknown layer."""


@dataclass(frozen=True)
class LayerEdge:
    """Dataset ``source`` (on layer ``source_layer``) is read by ``node``, which writes ``target``
    (on ``target_layer``), possibly through datasets without a layer in between."""

    source: str
    source_layer: str
    target: str
    target_layer: str
    node: str

    def __str__(self) -> str:
        return f"{self.source} ({self.source_layer}) -[{self.node}]-> {self.target} ({self.target_layer})"


def catalog_layers(catalog_config: Mapping[str, Any]) -> dict[str, str | None]:
    """``{dataset: layer}`` from catalog configuration (``config_loader["catalog"]``); entries
    without ``metadata.kedro-viz.layer`` map to None. Keys starting with ``_`` (YAML anchors) are
    not datasets."""
    out: dict[str, str | None] = {}
    for name, entry in catalog_config.items():
        if str(name).startswith("_") or not isinstance(entry, Mapping):
            continue
        viz = (entry.get("metadata") or {}).get("kedro-viz") or {}
        out[str(name)] = viz.get("layer") if isinstance(viz, Mapping) else None
    return out


def _is_parameter(name: str) -> bool:
    return name == "parameters" or name.startswith("params:")


def layer_edges(nodes: Iterable[Any], layers: Mapping[str, str | None]) -> list[LayerEdge]:
    """Every (layered input → layered output) pair of every node. A dataset without a layer is
    looked through, as kedro-viz does: its producer's layered inputs reach its readers' layered
    outputs. ``nodes`` are Kedro nodes (``.name``, ``.inputs``, ``.outputs``)."""
    nodes = list(nodes)
    producers: dict[str, list[Any]] = defaultdict(list)
    for node in nodes:
        for out in node.outputs:
            producers[out].append(node)

    def layered_sources(name: str, seen: frozenset[str]) -> list[str]:
        """The layered datasets that ``name`` is made from (itself if it has a layer)."""
        if layers.get(name) is not None:
            return [name]
        found: list[str] = []
        for producer in producers.get(name, []):
            for inp in producer.inputs:
                if not _is_parameter(inp) and inp not in seen:
                    found += layered_sources(inp, seen | {inp})
        return found

    edges: set[LayerEdge] = set()
    for node in nodes:
        sources = {s for inp in node.inputs if not _is_parameter(inp) for s in layered_sources(inp, frozenset({inp}))}
        for out in node.outputs:
            target_layer = layers.get(out)
            if target_layer is None:
                continue
            for source in sources:
                edges.add(LayerEdge(source, str(layers[source]), out, target_layer, node.name))
    return sorted(edges, key=lambda e: (e.node, e.source, e.target))


def sort_layers(edges: Iterable[LayerEdge], layers: Iterable[str] = (), total: bool = False) -> list[str]:
    """The layers in an order that every edge follows (ties broken by :data:`LAYERS`); raises
    :class:`LayerError` naming the datasets of a cycle. With ``total``, two layers that no chain of
    edges orders are an error too (kedro-viz would order them by its own tie-break)."""
    edges = list(edges)
    present = set(layers) | {e.source_layer for e in edges} | {e.target_layer for e in edges}
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    graph: dict[str, set[str]] = {layer: set() for layer in sorted(present, key=lambda x: (rank.get(x, len(rank)), x))}
    for e in edges:
        if e.source_layer != e.target_layer:
            graph[e.target_layer].add(e.source_layer)
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        cycle = list(exc.args[1])  # [a, b, ..., a]: data lead from each layer to the next
        steps = [next(e for e in edges if e.source_layer == a and e.target_layer == b)
                 for a, b in pairwise(cycle)]
        raise LayerError("the layers form a cycle, " + " → ".join(cycle) + ", through: "
                         + "; ".join(str(s) for s in steps)) from None
    # Kahn's algorithm, the earliest layer of LAYERS first among those whose sources are placed
    waiting = {layer: set(sources) for layer, sources in graph.items()}
    order: list[str] = []
    while waiting:
        ready = sorted((layer for layer, sources in waiting.items() if not sources),
                       key=lambda x: (rank.get(x, len(rank)), x))
        if total and len(ready) > 1:
            raise LayerError(f"no data lead from one of the layers {ready} to another: their order is undefined")
        order.append(ready[0])
        del waiting[ready[0]]
        for sources in waiting.values():
            sources.discard(ready[0])
    return order


def check_layers(nodes: Iterable[Any], layers: Mapping[str, str | None], total: bool = False) -> list[str]:
    """The layer order of the datasets that ``nodes`` read and write. Raises :class:`LayerError`
    when a dataset has no layer or one outside :data:`LAYERS`, when an edge goes against
    :data:`LAYERS`, when the layers form a cycle, or (``total``) when the data leave the order of
    two layers open."""
    nodes = list(nodes)
    used = {d for n in nodes for d in (*n.inputs, *n.outputs) if not _is_parameter(d)}
    unknown = sorted(f"{d} ({layers.get(d)})" for d in used if layers.get(d) not in LAYERS)
    if unknown:
        raise LayerError(f"dataset(s) without a layer of {list(LAYERS)}: {', '.join(unknown)}")
    edges = layer_edges(nodes, layers)
    present = {str(layers[d]) for d in used}
    order = sort_layers(edges, present)
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    backward = [e for e in edges if rank[e.target_layer] < rank[e.source_layer]]
    if backward:
        raise LayerError(f"{len(backward)} edge(s) go against the layer order {' → '.join(LAYERS)}: "
                         + "; ".join(str(e) for e in backward))
    return sort_layers(edges, present, total=True) if total else order

"""The graph Stream is given: every reader of a shared graph input reads its own copy of it.

Stream 2.1.1's fusion costs a node for only a slice of its work when one graph input is read by several nodes of a
fused group and the group tiles the dim they reduce over (engines.md trap 16; docs/stream-fusion-truncation.md). The
lowering gives each reader its own transfer of the input, the reduction dim of all but the first reader becomes a
dim of its own, and the fusion split on it reaches the first reader only. An input that only one node reads is never
split this way, so `split_shared_inputs` gives each reader its own graph input (same shape and type, named
`x__for_q_proj`); Stream then costs every reader in full.

Stream folds layout views (Reshape, Transpose, Flatten, Squeeze, Unsqueeze) into the node that reads their output,
so a reader is the first non-view node on each path from the input: `x -> Reshape -> {a, b}` is read by `a` and `b`
(measured: `b` is costed at 1/64 of its work without the copy). A view that several readers share is cloned per
reader (`x_view__for_a`); one on a single path keeps its name.

The rewrite is for Stream only: the analytic counts (`stream_mla.workloads.counts`) read the original graph, where a
copy would count as one more cache.

A copy per reader is also a DRAM read per reader. Inside one fused group whose readers tile none of the input's
reduced dims (the fused attention core: the shared MLA latent read as keys by the scores and as values by the
context), the truncation does not arise and one read is what a kernel does, so `split_shared_inputs(keep=...)` leaves
those inputs shared. Stream 2.1.1 then still gives each reader its own transfer when the input has an axis of extent
one (`_Lowering._reader_walks`, stream/allocation/lowering.py: an axis both readers index at the constant 0 counts
as "no shared dim", so the readers are not grouped), which reads the latent twice (measured: V3 absorb L = 32k on
h100-like, 71.6 MB instead of 37.7 MB). `squeeze_unit_axes` gives such an input without its unit axes (a Reshape view
restores the shape its readers see), and the readers share one transfer.
"""

from collections import Counter
from dataclasses import dataclass

import onnx
from onnx import helper

from stream_mla.workloads.graph import COPY_TAG

# The ops Stream folds into their readers (stream/parser/onnx/layout.py: LAYOUT_OPS)
LAYOUT_OPS = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})


@dataclass(frozen=True)
class ReadPath:
    """How a graph input reaches one reader: the views in between and the reader (positions in `graph.node`), and
    the reader's input slot."""

    views: tuple[int, ...]
    reader: int
    slot: int


def split_shared_inputs(model: onnx.ModelProto, keep: tuple[str, ...] = ()) -> onnx.ModelProto:
    """A copy of `model` where each reader of a graph input read by several nodes has its own copy of that input
    (except the inputs named in `keep`, which stay shared).

    Pure: `model` is not changed, and a graph without shared inputs comes back equal to it.
    """
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    graph = fixed.graph
    for name in shared_inputs(model):
        if name not in keep:
            give_each_reader_a_copy(graph, name, read_paths(graph, name))
    return fixed


UNIT_TAG = "__squeezed"


def squeeze_unit_axes(model: onnx.ModelProto, names: tuple[str, ...]) -> onnx.ModelProto:
    """A copy of `model` where each graph input in `names` that has an axis of extent one (and another that has not)
    is given without its unit axes, as `<name>__squeezed`, and a Reshape view named after the input restores its shape
    for the readers (Stream folds the view into them). Pure, like `split_shared_inputs`."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    graph = fixed.graph
    for position, graph_input in enumerate(list(graph.input)):
        dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
        if graph_input.name not in names or 1 not in dims or set(dims) == {1}:
            continue
        name, source = graph_input.name, graph_input.name + UNIT_TAG
        shape = helper.make_tensor(f"{source}_shape", onnx.TensorProto.INT64, [len(dims)], dims)
        graph.initializer.append(shape)
        graph.node.insert(0, helper.make_node("Reshape", [source, shape.name], [name], name=f"{name}_view"))
        graph.value_info.append(renamed(graph_input, name))
        kept = [d for d in dims if d != 1]
        squeezed = helper.make_tensor_value_info(source, graph_input.type.tensor_type.elem_type, kept)
        del graph.input[position]
        graph.input.insert(position, squeezed)
    return fixed


def shared_inputs(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Graph inputs read by several nodes (through views), with their readers: what `split_shared_inputs` splits.
    An initializer listed as an input is a constant, and an input that is also an output keeps its name."""
    graph = model.graph
    fixed_names = {t.name for t in graph.initializer} | {o.name for o in graph.output}
    shared = {}
    for graph_input in graph.input:
        paths = [] if graph_input.name in fixed_names else read_paths(graph, graph_input.name)
        if len(paths) > 1:
            shared[graph_input.name] = [graph.node[p.reader].name for p in paths]
    return shared


def read_paths(graph: onnx.GraphProto, tensor: str, views: tuple[int, ...] = ()) -> list[ReadPath]:
    """Every path from `tensor` to a node that reads it, through views (which Stream folds into their reader)."""
    paths = []
    for index, node in enumerate(graph.node):
        for slot, name in enumerate(node.input):
            if name != tensor:
                continue
            if node.op_type in LAYOUT_OPS and slot == 0 and any(node.output[0] in n.input for n in graph.node):
                paths += read_paths(graph, node.output[0], (*views, index))
            else:
                paths.append(ReadPath(views, index, slot))
    return paths


def give_each_reader_a_copy(graph: onnx.GraphProto, name: str, paths: list[ReadPath]) -> None:
    """Replace graph input `name` by one copy per path, cloning the views several paths share; in place."""
    taken = {vi.name for vi in (*graph.input, *graph.output, *graph.value_info)} | {n.name for n in graph.node}
    taken |= {t for n in graph.node for t in n.output}
    shapes = {vi.name: vi for vi in graph.value_info}
    graph_input = next(vi for vi in graph.input if vi.name == name)
    clones: dict[int, list[onnx.NodeProto]] = {}  # position of an original view -> its clones, one per path
    through = Counter(index for path in paths for index in path.views)  # paths through each view
    copies = []
    for path in paths:
        reader = graph.node[path.reader]
        tag = fresh(f"{COPY_TAG}{reader.name or reader.output[0]}", name, taken)
        copies.append(renamed(graph_input, name + tag))
        source = name + tag
        for index in path.views:
            view = graph.node[index]
            if through[index] == 1:  # a view on this path only reads the copy itself and keeps its name
                view.input[0], source = source, view.output[0]
                continue
            clone = copied(view)
            clone.name, clone.input[0], clone.output[0] = view.name + tag, source, view.output[0] + tag
            if view.output[0] in shapes:  # keep the view's inferred shape under the clone's name
                graph.value_info.append(renamed(shapes[view.output[0]], clone.output[0]))
            clones.setdefault(index, []).append(clone)
            source = clone.output[0]
        reader.input[path.slot] = source
    replace_views(graph, clones)
    position = [vi.name for vi in graph.input].index(name)
    del graph.input[position]
    for offset, copy in enumerate(copies):
        graph.input.insert(position + offset, copy)


def fresh(tag: str, base: str, taken: set[str]) -> str:
    """`tag`, suffixed until `base + tag` names nothing in the graph (a reader read at two slots gets two copies)."""
    candidate, i = tag, 1
    while base + candidate in taken:
        candidate, i = f"{tag}_{i}", i + 1
    taken.add(base + candidate)
    return candidate


def renamed(value_info: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    copy = copied(value_info)
    copy.name = name
    return copy


def copied(message):
    """A detached copy of a protobuf message (elements of a repeated field do not outlive its clearing)."""
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def replace_views(graph: onnx.GraphProto, clones: dict[int, list[onnx.NodeProto]]) -> None:
    """Each original view where it stood, replaced by its clones: they read what it read, so the order stays valid.
    The originals' shape entries go with them."""
    gone = {graph.node[i].output[0] for i in clones}
    nodes = [copied(n) for index, node in enumerate(graph.node) for n in clones.get(index, [node])]
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [copied(vi) for vi in graph.value_info if vi.name not in gone]
    del graph.value_info[:]
    graph.value_info.extend(kept)

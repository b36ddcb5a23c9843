"""Patches that make jax2onnx (0.17) conversion of large graphs fast and repeatable.

    with fast_jax2onnx(): jax2onnx.to_onnx(...)

Each patch replaces a jax2onnx internal with a function giving the same answer (checked: the
patched conversion of a 14-block subnet equals the unpatched first conversion node for node and
initializer for initializer), and is a no-op where jax2onnx's layout differs from 0.17's.
`evonas_jax.export_onnx.convert` always converts under it.
"""
from __future__ import annotations

import contextlib


class _NodeIndex:
  """Lookups over one node-list snapshot: the ids of its nodes, and the first node (in list
  order) producing each output value (by identity) and each output name."""

  def __init__(self, nodes: list):
    self.nodes, self.length = nodes, len(nodes)   # the strong reference keeps ids unique
    self.ids = {id(n) for n in nodes}
    self.by_obj, self.by_name = {}, {}
    for pos, n in enumerate(nodes):
      for ov in n.outputs:
        self.by_obj.setdefault(id(ov), (pos, n))
        if ov.name:
          self.by_name.setdefault(ov.name, (pos, n))


@contextlib.contextmanager
def fast_jax2onnx():
  """Makes jax2onnx (0.17) conversion of large graphs ~linear instead of quadratic, and every
  conversion in a process give the graph of the first one.

  Measured with cProfile: on one VSSD mixer half unrolled 8x (~5,000 nodes) 40% of the time is
  the optimiser's `_producer_node` / `_consumer_nodes`, which rebuild a set of every node id on
  each call and then scan the node list, and 20% the output-binding check scanning every
  initializer; on a 14-block tiny subnet (6,585 nodes, with the two fixed) 40% is the
  broadcast lowering listing every initializer (twice) to find one constant by name. The
  optimiser passes call the first two with a `list(graph)` snapshot they never mutate, so an
  index per snapshot (kept while the same list object of the same length is passed) gives the
  answers of the scans; an initializer is found by name in the graph's initializer dict.
  Anything else goes to jax2onnx's own functions; a no-op where its layout differs.
  Checked: the patched conversion of that subnet equals the unpatched one node for node
  (op types, input and output names) and initializer for initializer (bytes).
  """
  try:
    import onnx_ir as ir
    from jax2onnx.converter import (conv_transpose_bias_folding, ir_optimizations,
                                    optimizer_graph_utils as ogu, output_binding)
  except ImportError:
    yield
    return
  orig_prod, orig_cons = ogu._producer_node, ogu._consumer_nodes
  orig_conn = output_binding._value_is_graph_connected
  cache: list = [None]

  def index(nodes):
    idx = cache[0]
    if idx is None or idx.nodes is not nodes or idx.length != len(nodes):
      idx = cache[0] = _NodeIndex(nodes)
    return idx

  def producer(nodes, value_or_name):
    if type(nodes) is not list or value_or_name is None:
      return orig_prod(nodes, value_or_name)
    idx = index(nodes)
    ref = value_or_name if isinstance(value_or_name, ir.Value) else None
    if ref is not None:
      prod = ref.producer()
      if isinstance(prod, ir.Node) and id(prod) in idx.ids:
        return prod
    name = ogu._v_name(value_or_name)
    hits = [h for h in (idx.by_obj.get(id(ref)) if ref is not None else None,
                        idx.by_name.get(name) if name else None) if h is not None]
    return min(hits, key=lambda h: h[0])[1] if hits else None

  def consumers(nodes, value_or_name):
    if type(nodes) is not list or not isinstance(value_or_name, ir.Value):
      return orig_cons(nodes, value_or_name)
    idx = index(nodes)
    cons = value_or_name.consumers()
    if cons and all(isinstance(c, ir.Node) for c in cons):
      found = [c for c in cons if id(c) in idx.ids]
      if found:
        return found
    return orig_cons(nodes, value_or_name)

  def connected(ctx, value):
    graph = getattr(getattr(ctx, "builder", None), "graph", None)
    inits = getattr(graph, "initializers", None)
    if value is not None and value.name and inits is not None and value.name in inits:
      return True
    return orig_conn(ctx, value)

  try:
    from jax2onnx.converter.ir_builder import _InitializerList
    from jax2onnx.plugins.jax.lax import broadcast_in_dim as bid
    orig_mat = bid._materialize_constant_array
  except (ImportError, AttributeError):
    bid = None

  def materialize(ctx, value, seen=None):
    # jax2onnx lists every initializer (twice: two names of one view) to find one by name;
    # the graph's initializer dict answers directly. The rest is jax2onnx's own code.
    builder = getattr(ctx, "builder", None)
    view = getattr(builder, "initializers", None)
    name = getattr(value, "name", None)
    if (not name or not isinstance(view, _InitializerList) or getattr(builder, "_initializers",
                                                                      view) is not view):
      return orig_mat(ctx, value, seen)
    arr = bid._value_to_numpy(value)
    if arr is not None:
      return arr
    init = view._graph.initializers.get(name)
    if init is not None and getattr(init, "name", None) == name:
      arr = bid._value_to_numpy(init)
      if arr is not None:
        return arr

    class _Unnamed:   # the same value without its name: skips the scan, keeps the producer path
      def producer(self):
        return value.producer()
    return orig_mat(ctx, _Unnamed(), seen)

  # jax2onnx registers the constant folders the gather lowering needs on the conversion
  # context, but guards it with a module-level flag: every conversion after the first in a
  # process then finds no folder, cannot see that slice indices are constant, and writes each
  # static slice as a GatherND with its index arithmetic (measured: a VSSD mixer half 296 ->
  # 658 nodes, a whole subnet 6,585 -> 13,825, a slower graph). Registering per call (a dict
  # write per primitive) makes every conversion the first one.
  try:
    from jax2onnx.plugins.jax.lax import gather as gather_plugin
    orig_reg = gather_plugin._ensure_constant_folders_registered
  except (ImportError, AttributeError):
    gather_plugin = None

  def register(ctx):
    gather_plugin._CONST_HANDLERS_REGISTERED = False
    return orig_reg(ctx)

  mods = (ogu, ir_optimizations, conv_transpose_bias_folding)
  saved = [(m, n, getattr(m, n)) for m in mods for n in ("_producer_node", "_consumer_nodes")
           if hasattr(m, n)]
  for m, n, _ in saved:
    setattr(m, n, producer if n == "_producer_node" else consumers)
  output_binding._value_is_graph_connected = connected
  if bid is not None:
    bid._materialize_constant_array = materialize
  if gather_plugin is not None:
    gather_plugin._ensure_constant_folders_registered = register
  try:
    yield
  finally:
    if gather_plugin is not None:
      gather_plugin._ensure_constant_folders_registered = orig_reg
    if bid is not None:
      bid._materialize_constant_array = orig_mat
    for m, n, f in saved:
      setattr(m, n, f)
    output_binding._value_is_graph_connected = orig_conn
    cache[0] = None


@contextlib.contextmanager
def linear_time_output_check():
  """jax2onnx (0.17) checks, after lowering each equation, that its outputs are "graph
  connected" by scanning every node built so far: quadratic in the graph size. A VSSD subnet
  has ~5,000 equations, and the scan took 650 of 750 s of one conversion (cProfile). This swaps
  in a check with the same answer: a value whose producing node belongs to the builder's graph
  is connected (the scan would find that node); anything else goes to the original scan."""
  try:
    from jax2onnx.converter import output_binding
  except ImportError:   # another jax2onnx layout: keep its own check
    yield
    return
  original = getattr(output_binding, "_value_is_graph_connected", None)
  if original is None:
    yield
    return

  def connected(ctx, value):
    producer = getattr(value, "producer", None)
    node = producer() if callable(producer) else None
    graph = getattr(getattr(ctx, "builder", None), "graph", None)
    if node is not None and graph is not None and getattr(node, "graph", None) is graph:
      return True
    return original(ctx, value)

  output_binding._value_is_graph_connected = connected
  try:
    yield
  finally:
    output_binding._value_is_graph_connected = original

"""The engine's fast path: a Pyro objective traced once with :func:`torch.jit.trace`.

:class:`Traced` (the ``jit_*`` objectives, and ``compile="jit"``/``"auto"`` of
:func:`inference.fit`) replays the objective as a graph traced once per batch shape,
which removes Pyro's per-step Python (traces, messengers, distribution objects) and
gives the same loss and gradients, bit for bit (tests/inference/test_fast_path.py), except
TraceEnum_ELBO of a single enumerated site, which it collapses to one ``logsumexp``
(:func:`collapsed_enum_elbo`: the same within float rounding).
Everything about tracing lives in this module.
"""
from __future__ import annotations

import math
import warnings

import pyro.infer as infer
import torch
from pyro.infer.elbo import ELBO
from pyro.infer.util import is_identically_zero

__all__ = ["Traced", "collapsed_enum_elbo", "simplify_graph"]


def collapsed_enum_elbo(model_trace, guide_trace):
    """TraceEnum_ELBO's ELBO of one particle as one ``logsumexp``, or None where it does not apply.

    It applies where the guide samples nothing and the model has one enumerated site, every
    other sample site observed, all their log-densities over the same dimensions (the
    enumerated one and the plates), unmasked and under one scale: a mixture whose component
    is summed out, ``log p(x) = sum_n logsumexp_k [log p(z_n = k) + log p(x_n | z_n = k)]``.
    That is the quantity ``TraceEnum_ELBO`` contracts (with its Dice weights all one); Pyro's
    general contraction shifts and exponentiates each factor apart and sums their product
    by ``einsum``, about 25 small operations where this is one sum and one ``logsumexp``. The
    value and gradients are the same within float rounding, not bit for bit.
    """
    if any(site["type"] == "sample" for site in guide_trace.nodes.values()):
        return None
    sites = [site for site in model_trace.nodes.values() if site["type"] == "sample"]
    enumerated = [site for site in sites if site["infer"].get("_enumerate_dim") is not None]
    if len(enumerated) != 1 or sum(site["is_observed"] for site in sites) != len(sites) - 1:
        return None
    terms = [site["packed"]["unscaled_log_prob"] for site in sites]
    dims = terms[0]._pyro_dims
    enum_dims = set(dims) - set(model_trace.plate_to_symbol.values())
    if (len(enum_dims) != 1 or any(sorted(t._pyro_dims) != sorted(dims) for t in terms)
            or any(site.get("mask") is not None for site in sites)):
        return None
    if any(isinstance(site["scale"], torch.Tensor) and site["scale"].dim() for site in sites):
        return None  # a tensor scale: Pyro's contraction says what it makes of it
    scales = {float(site["scale"]) for site in sites}
    if len(scales) != 1:
        return None
    total = None
    for t in terms:  # every term in the first term's order of dimensions
        if t._pyro_dims != dims:
            t = t.permute([t._pyro_dims.index(c) for c in dims])
        total = t if total is None else total + t
    lse = total.logsumexp(dims.index(enum_dims.pop()))
    return (lse * sites[0]["scale"]).sum()


class _LossModule(torch.nn.Module):
    """``objective.differentiable_loss(model, guide, x, num_data)`` as a module of x
    (with ``collapse``, TraceEnum_ELBO's loss by :func:`collapsed_enum_elbo`)."""

    def __init__(self, objective, model, guide, num_data, collapse=False):
        super().__init__()
        self.objective, self.model_fn, self.guide_fn, self.num_data = objective, model, guide, num_data
        self.collapse = collapse
        # register the modules that own the parameters, so tracing sees them as inputs
        self.owners = torch.nn.ModuleList(
            {id(m): m for m in (getattr(model, "__self__", None), getattr(guide, "__self__", guide))
             if isinstance(m, torch.nn.Module)}.values()
        )

    def forward(self, x):
        objective, kwargs = self.objective, {"num_data": self.num_data}
        if self.collapse:  # as TraceEnum_ELBO.differentiable_loss sums and averages its particles
            elbo = 0.0
            for model_trace, guide_trace in objective._get_traces(self.model_fn, self.guide_fn, (x,), kwargs):
                particle = collapsed_enum_elbo(model_trace, guide_trace)
                if particle is None:
                    raise RuntimeError("the enumerated program changed its structure between calls")
                elbo = elbo + particle
            return -(elbo / objective.num_particles)
        if not isinstance(objective, infer.Trace_ELBO):
            return objective.differentiable_loss(self.model_fn, self.guide_fn, x, **kwargs)
        # Trace_ELBO's differentiable_loss adds Python floats (torch_item), which tracing
        # would freeze as constants. Traced instead: its surrogate (for the gradient) and
        # the loss itself, summed in float64 in the same order as Pyro sums the floats
        # (so the value is Pyro's to the last bit, also for score-function guides,
        # whose surrogate's value is not the loss)
        if isinstance(objective, infer.TraceMeanField_ELBO):  # its surrogate is the loss
            loss = 0.0
            for model_trace, guide_trace in objective._get_traces(self.model_fn, self.guide_fn, (x,), kwargs):
                loss = loss + objective._differentiable_loss_particle(model_trace, guide_trace)[1] / objective.num_particles
            return loss
        loss = surrogate = 0.0
        exact_value = False
        for model_trace, guide_trace in objective._get_traces(self.model_fn, self.guide_fn, (x,), kwargs):
            _, surrogate_particle = objective._differentiable_loss_particle(model_trace, guide_trace)
            surrogate = surrogate + surrogate_particle / objective.num_particles
            terms = [
                (sign, site)
                for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0))
                for site in trace.nodes.values()
                if site["type"] == "sample"
            ]
            score = any(not is_identically_zero(s["score_parts"].score_function) for t, s in terms if t < 0)
            # one log-density term and no score function: the surrogate is the loss, bit for bit
            exact_value = exact_value or score or len(terms) > 1
            elbo = 0.0
            for sign, site in terms:  # detached: the value needs no autograd graph
                lp = torch.as_tensor(site["log_prob_sum"]).detach().double()
                elbo = elbo + lp if sign > 0 else elbo - lp
            loss = loss + (-elbo) / objective.num_particles
        if not exact_value:
            return surrogate
        return surrogate + (torch.as_tensor(loss).to(surrogate.dtype) - surrogate.detach())


def _constant(value, equal_to) -> bool:
    """Whether graph value ``value`` is a constant number (or 0-dim tensor) equal to ``equal_to``."""
    if value.node().kind() != "prim::Constant":
        return False
    try:
        c = value.toIValue()
    except RuntimeError:
        return False
    if isinstance(c, torch.Tensor):
        return c.dim() == 0 and bool(c == equal_to)
    return isinstance(c, (int, float)) and not isinstance(c, bool) and c == equal_to


def _same_type(a, b) -> bool:
    """Whether two graph values are tensors of one recorded dtype, device and shape."""
    ta, tb = a.type(), b.type()
    if not (isinstance(ta, torch._C.TensorType) and isinstance(tb, torch._C.TensorType)):
        return False
    return (ta.sizes() is not None and ta.sizes() == tb.sizes() and ta.dtype() is not None
            and ta.dtype() == tb.dtype() and ta.device() == tb.device())


_VIEWS = ("aten::reshape", "aten::expand", "aten::slice", "aten::view", "aten::contiguous", "aten::to")


def simplify_graph(graph, module=None) -> None:
    """Remove the trace's no-op operations, keeping every result bit for bit.

    A Pyro program traced at one batch shape carries bookkeeping that is constant at that
    shape (the plate's subsample indices and scale) and operations that do nothing
    there: ``x + 0``, ``x * 1``, ``x / 1``, a reshape, expand, slice or cast to the
    shape and type ``x`` has, a broadcast of tensors of one shape. Folding the first and
    dropping the others leaves the same values and the same gradients (those operations'
    backward passes are exact identities too) for a fraction of the per-step cost of a
    small model. Sizes come from the types the trace recorded for the example input, so
    the graph is valid for that shape only (:class:`Traced` keys graphs by shape).
    Three rewrites of TraceEnum_ELBO's graph follow, each exact: Pyro's ``_SafeLog`` as aten
    operations, the gather of enumerated parameters as a view, Dice's constant weights folded.
    ``module``, the traced module whose graph this is, gives the sizes of its parameters.
    """
    torch._C._jit_pass_peephole(graph, False)  # x.size(d) -> constant, at the traced shape
    torch._C._jit_pass_constant_propagation(graph)
    for node in list(graph.nodes()):
        kind, ins, outs = node.kind(), list(node.inputs()), list(node.outputs())
        if kind == "aten::broadcast_tensors":
            (listed,) = ins
            uses = [u.user for u in outs[0].uses()]
            if (listed.node().kind() == "prim::ListConstruct" and len(uses) == 1
                    and uses[0].kind() == "prim::ListUnpack"):
                parts, unpacked = list(listed.node().inputs()), list(uses[0].outputs())
                if len(parts) == len(unpacked) and (len(parts) == 1 or all(_same_type(a, b) for a, b in zip(parts, unpacked))):
                    for a, b in zip(parts, unpacked):
                        b.replaceAllUsesWith(a)
            continue
        if len(outs) != 1:
            continue
        source = None
        if kind in ("aten::add", "aten::sub") and len(ins) == 3 and _constant(ins[1], 0) and _constant(ins[2], 1):
            source = ins[0]
        elif kind in ("aten::mul", "aten::div") and len(ins) == 2 and _constant(ins[1], 1):
            source = ins[0]
        elif kind in _VIEWS and len(ins) >= 2:
            source = ins[0]
        if source is not None and _same_type(source, outs[0]):
            outs[0].replaceAllUsesWith(source)
    # (no common-subexpression elimination: merging two equal computations changes the
    # order in which their gradients are summed, so the gradients would differ in the last bit)
    _safe_log_as_aten(graph)
    _arange_index_as_view(graph, module)
    _fold_dice_weights(graph)
    torch._C._jit_pass_dce(graph)
    _negate_after_sum(graph)  # after the dead code is gone: it needs a negation's only use


def _safe_log_as_aten(graph) -> None:
    """Pyro's ``_SafeLog`` (the log of TraceEnum_ELBO's log-space contraction) as aten operations.

    Traced, that autograd Function is a call into Python forward and backward (about 0.2 ms a
    step of a small mixture). Its forward is ``x.log()`` and its backward ``grad / x.clamp(min=eps)``.
    ``log(x.detach()) + (q - q.detach())`` with ``q = x / x.detach().clamp(min=eps)`` has that value
    (``q - q.detach()`` is exactly 0 for every finite x; the contraction's x is a sum of shifted
    exponentials, at most its number of terms) and that gradient (the division's), bit for bit.
    """
    from pyro.ops.special import _SafeLog

    for node in list(graph.nodes()):
        if node.kind() != "prim::PythonOp" or getattr(node.pyobj(), "__self__", None) is not _SafeLog:
            continue
        ins, outs = list(node.inputs()), list(node.outputs())
        if len(ins) != 1 or len(outs) != 1 or not isinstance(ins[0].type(), torch._C.TensorType):
            continue
        (x,), (out,) = ins, outs
        dtype = x.type().dtype()
        if dtype is None or not dtype.is_floating_point:
            continue
        with graph.insert_point_guard(node):
            eps, none, one = (graph.insertConstant(c) for c in (torch.finfo(dtype).eps, None, 1))

        def op(kind, *inputs):
            new = graph.create(kind, list(inputs), 1)
            new.insertBefore(node)
            new.output().setType(out.type())
            return new.output()

        constant = op("aten::detach", x)  # clamp and log of x outside autograd: no backward nodes
        q = op("aten::div", x, op("aten::clamp", constant, eps, none))
        zero = op("aten::sub", q, op("aten::detach", q), one)
        value = op("aten::add", op("aten::log", constant), zero, one)
        out.replaceAllUsesWith(value)
        node.destroy()


def _writes_in_place(graph) -> bool:
    """Whether the graph has an in-place operation (``aten::add_``, ...)."""
    return any(n.kind().endswith("_") and not n.kind().endswith("__") for n in graph.nodes())


def _fold_dice_weights(graph) -> None:
    """Fold the constant probability weights of Pyro's Dice estimator (TraceEnum_ELBO).

    With nothing sampled by the guide, Dice weights each cost by ``exp(zeros_like(cost))``
    and keeps the entries where that is positive, a ``masked_select`` of every entry. At the
    traced shape ``zeros_like`` is a constant, so constant propagation folds the weights and
    the mask; a ``masked_select`` by a constant all-true mask of the value's own shape is the
    flattened value (its backward, a scatter into zeros, gives the same values). Nothing is
    folded in a graph with an in-place operation, which could write into a folded constant.
    """
    if _writes_in_place(graph):
        return
    for node in list(graph.nodes()):
        if node.kind() != "aten::zeros_like":
            continue
        (v, *options) = list(node.inputs())
        t = v.type()
        if not (isinstance(t, torch._C.TensorType) and t.sizes() is not None and math.prod(t.sizes()) <= 1 << 20
                and t.dtype() is not None
                and t.device() is not None and all(o.node().kind() == "prim::Constant" and o.toIValue() in (None, False)
                                                   for o in options)):
            continue
        with graph.insert_point_guard(node):
            zeros = graph.insertConstant(torch.zeros(t.sizes(), dtype=t.dtype(), device=t.device()))
        zeros.setType(node.output().type())
        node.output().replaceAllUsesWith(zeros)
        node.destroy()
    torch._C._jit_pass_constant_propagation(graph)
    for node in list(graph.nodes()):
        if node.kind() != "aten::masked_select":
            continue
        v, mask = node.inputs()
        try:
            m = mask.toIValue() if mask.node().kind() == "prim::Constant" else None
        except RuntimeError:
            m = None
        sizes = v.type().sizes() if isinstance(v.type(), torch._C.TensorType) else None
        if not isinstance(m, torch.Tensor) or sizes is None or list(m.shape) != list(sizes) or not bool(m.all()):
            continue
        with graph.insert_point_guard(node):
            flat = graph.insertConstant([-1])
        reshape = graph.create("aten::reshape", [v, flat], 1)
        reshape.insertBefore(node)
        reshape.output().setType(node.output().type())
        node.output().replaceAllUsesWith(reshape.output())
        node.destroy()


def _attribute(value, module):
    """The tensor that graph value ``value`` reads from ``module`` by attribute lookups, or None."""
    names = []
    while value.node().kind() == "prim::GetAttr":
        names.append(value.node().s("name"))
        value = value.node().input()
    if module is None or not names or value.node().kind() != "prim::Param":
        return None
    try:
        for name in reversed(names):
            module = getattr(module, name)
    except AttributeError:
        return None
    return module if isinstance(module, torch.Tensor) else None


def _arange_index_as_view(graph, module=None) -> None:
    """``t[i]`` with a constant ``i`` that lists ``0..len(t)-1`` in order -> a reshape of ``t``.

    Enumerating a discrete site indexes its parameters by the site's support (Vindex with
    ``arange(K)`` shaped for broadcasting). That gather copies every row once, so its value
    is the view's, and its backward (an accumulating scatter into zeros) is the view's
    gradient: the same values (a -0.0 gradient entry may come back as +0.0). Not in a graph
    with an in-place operation, which could then write into the parameter through the view.
    """
    if _writes_in_place(graph):
        return
    for node in list(graph.nodes()):
        if node.kind() != "aten::index":
            continue
        source, listed = node.inputs()
        try:
            indices = listed.toIValue() if listed.node().kind() == "prim::Constant" else None
        except RuntimeError:
            indices = None
        if not indices or len(indices) != 1 or not isinstance(indices[0], torch.Tensor):
            continue
        (i,) = indices
        sizes, out = source.type().sizes(), node.output()
        if sizes is None and _attribute(source, module) is not None:
            sizes = list(_attribute(source, module).shape)  # a parameter: its size
        if (sizes is None or not sizes or i.dtype != torch.long or i.numel() != sizes[0]
                or not torch.equal(i.flatten().cpu(), torch.arange(sizes[0]))):
            continue
        with graph.insert_point_guard(node):
            shape = graph.insertConstant([*i.shape, *sizes[1:]])
        reshape = graph.create("aten::reshape", [source, shape], 1)
        reshape.insertBefore(node)
        view = reshape.output()
        view.setType(out.type())
        out.replaceAllUsesWith(view)
        node.destroy()


def _negate_after_sum(graph) -> None:
    """Move negations after the sums and products they feed, and cancel pairs of them.

    ``sum(-v, ...)`` -> ``-sum(v, ...)`` and ``(-a) * b`` -> ``-(a * b)`` where the negation
    feeds only that operation, until none moves; then ``-(-v)`` -> ``v``. A log-density
    ``-bce(logits, x)`` summed over its event is the common case: the negation then runs on
    the summed (batch,) tensor instead of the (batch, n) one, and the ELBO's own negation of
    the plate-scaled sum cancels it, in the forward and the backward pass. Negation
    commutes with rounding, so the values and the gradients are the same bit for bit.
    """
    moved_one = True
    while moved_one:
        moved_one = False
        for node in list(graph.nodes()):
            if node.kind() not in ("aten::sum", "aten::mul"):
                continue
            ins = list(node.inputs())
            positions = [0] if node.kind() == "aten::sum" else [0, 1] if len(ins) == 2 else []
            for pos in positions:
                source = ins[pos]
                neg = source.node()
                if (neg.kind() != "aten::neg" or len(source.uses()) != 1
                        or not isinstance(ins[pos].type(), torch._C.TensorType)
                        or not isinstance(ins[1 - pos].type() if node.kind() == "aten::mul" else source.type(),
                                          torch._C.TensorType)):
                    continue
                ins[pos] = next(neg.inputs())
                moved = graph.create(node.kind(), ins, 1)
                moved.insertBefore(node)
                out = node.output()
                moved.output().setType(out.type())
                negated = graph.create("aten::neg", [moved.output()], 1)
                negated.insertAfter(moved)
                negated.output().setType(out.type())
                out.replaceAllUsesWith(negated.output())
                node.destroy()
                neg.destroy()
                moved_one = True
                break
    for node in list(graph.nodes()):
        if node.kind() != "aten::neg":
            continue
        inner = next(node.inputs()).node()
        if inner.kind() == "aten::neg" and _same_type(next(inner.inputs()), node.output()):
            node.output().replaceAllUsesWith(next(inner.inputs()))
    torch._C._jit_pass_dce(graph)


def _identity(fn):
    """A key for a function that is stable across accesses of a bound method."""
    owner = getattr(fn, "__self__", None)
    return (id(owner), fn.__func__) if owner is not None else id(fn)


class Traced(ELBO):
    """A Pyro objective compiled with :func:`torch.jit.trace`: the ``jit_*`` objectives.

    Pyro's own ``Jit*_ELBO`` classes read parameters from the global parameter store, so
    they fail with the zoo's module-local parameters ("Cannot insert a Tensor that
    requires grad as a constant"), and in pyro-ppl 1.9.2 ``JitTraceMeanField_ELBO``
    recompiles on every step. This traces the wrapped objective once per (model, guide,
    batch shape, ``num_data``), with the modules' parameters as graph inputs, and replays
    the graph afterwards: the same loss and gradients, without Pyro's per-step Python.
    The model must have static structure (no data-dependent Python control flow).
    """

    def __init__(self, objective: ELBO):
        self.objective = objective
        self.num_particles = objective.num_particles
        self.max_plate_nesting = objective.max_plate_nesting
        self.compiled: dict = {}
        #: run TorchScript's graph optimiser (fusions; not bit-identical to eager autograd)
        self.optimize = False
        #: drop the trace's no-op operations (bit-identical; see :func:`simplify_graph`)
        self.simplify = True
        #: TraceEnum_ELBO of one enumerated site as one logsumexp (see :func:`collapsed_enum_elbo`;
        #: equal within float rounding); False keeps Pyro's contraction, bit for bit
        self.collapse_enum = True

    def _collapsible(self, model, guide, x, num_data) -> bool:
        """Whether every particle of the objective's traces (run once, without gradients) has
        :func:`collapsed_enum_elbo`'s form."""
        if not (self.collapse_enum and isinstance(self.objective, infer.TraceEnum_ELBO)):
            return False
        with torch.no_grad():
            traces = list(self.objective._get_traces(model, guide, (x,), {"num_data": num_data}))
        return bool(traces) and all(collapsed_enum_elbo(m, g) is not None for m, g in traces)

    def differentiable_loss(self, model, guide, x, num_data=None):
        key = (_identity(model), _identity(guide), tuple(x.shape), x.dtype, x.device, num_data)
        fn = self.compiled.get(key)
        if fn is None:
            # tracing runs the objective once: keep the random numbers it draws out of
            # the stream, so that jit and plain objectives give the same draws
            devices = [x.device] if x.device.type == "cuda" else []
            with warnings.catch_warnings(), torch.random.fork_rng(devices=devices):
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                module = _LossModule(self.objective, model, guide, num_data,
                                     collapse=self._collapsible(model, guide, x, num_data))
                fn = torch.jit.trace(module, (x,), check_trace=False)
                if self.simplify:
                    try:
                        simplify_graph(fn.graph, fn)
                    except (RuntimeError, AttributeError, TypeError):  # an internal API changed:
                        fn = torch.jit.trace(module, (x,), check_trace=False)  # the plain trace
            self.compiled[key] = fn
        previous = torch._C._get_graph_executor_optimize()
        torch._C._set_graph_executor_optimize(self.optimize)  # torch.jit.optimized_execution, inlined
        try:
            return fn.forward(x)
        finally:
            torch._C._set_graph_executor_optimize(previous)

    def loss(self, model, guide, *args, **kwargs):
        with torch.no_grad():
            return self.objective.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()

    def _get_trace(self, model, guide, args, kwargs):
        return self.objective._get_trace(model, guide, args, kwargs)

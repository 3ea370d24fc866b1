"""Training objectives, chosen by name.

=================  ====================================================================
name               objective
=================  ====================================================================
``elbo``           :class:`pyro.infer.Trace_ELBO`
``meanfield``      :class:`pyro.infer.TraceMeanField_ELBO` (analytic KL where known)
``enum``           :class:`pyro.infer.TraceEnum_ELBO` (discrete latents summed out)
``iwae``           importance-weighted bound of Burda et al. 2016 (``num_particles`` K)
``renyi``          Renyi alpha-bound of Li & Turner 2016 (``alpha`` = 0.5, K particles)
``jit_<name>``     any of the above compiled with ``torch.jit.trace`` (:class:`Traced`)
=================  ====================================================================

Every objective provides ``differentiable_loss(model, guide, *args, **kwargs)``: the
negative bound, a differentiable scalar, which is all the engine needs.
"""
from __future__ import annotations

import math
import warnings

import pyro.infer as infer
import torch
from pyro.infer.elbo import ELBO
from pyro.infer.util import is_identically_zero

__all__ = ["OBJECTIVES", "RenyiBound", "make_objective"]


class RenyiBound(ELBO):
    r"""The Renyi alpha-bound, with the IWAE bound (``alpha = 0``) as its special case.

    For each data point n with local latents z and K guide draws z_k,

    .. math:: \mathcal{L}_\alpha = \frac{1}{1-\alpha} \log \frac{1}{K} \sum_k
              \Big(\frac{p(x_n, z_k)}{q(z_k \mid x_n)}\Big)^{1-\alpha}.

    Unlike :class:`pyro.infer.RenyiELBO` (pyro-ppl 1.9.2), which log-sum-exps the
    *scaled* log-weights and so is biased under minibatch subsampling, this applies the
    data plate's scale *after* the per-data-point log-mean-exp, and it provides
    ``differentiable_loss``. Models with only global latents (no latent site inside the
    ``data`` plate) get one importance weight per particle for the whole data set.
    Latents both global and local are not supported (there is no per-point bound).
    Particles are vectorised; the guide must be reparameterisable.
    """

    def __init__(self, alpha: float = 0.0, num_particles: int = 2, max_plate_nesting: int = 1):
        if alpha == 1:
            raise ValueError("alpha = 1 is the ELBO: use objective 'elbo'")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
        )
        self.alpha = alpha

    def _get_trace(self, model, guide, args, kwargs):
        from pyro.infer.enum import get_importance_trace

        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        (model_trace, guide_trace), = self._get_traces(model, guide, args, kwargs)
        K = self.num_particles
        particle_dim = -self.max_plate_nesting  # vectorised ELBOs add the particle plate to it
        glob = 0.0  # (K,) log-weight of sites outside the data plate
        local = 0.0  # (K, B) per-data-point log-weight, unscaled
        scale = 1.0
        has_local_latent = has_global_latent = False
        for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
            for site in trace.nodes.values():
                if site["type"] != "sample":
                    continue
                if guide_trace is trace and not is_identically_zero(site["score_parts"][1]):
                    raise NotImplementedError(
                        "the Renyi/IWAE objective needs a reparameterisable guide"
                    )
                lp = site["unscaled_log_prob"]
                frames = [f for f in site["cond_indep_stack"] if f.name == "data"]
                if frames:
                    data_dim = frames[0].dim
                    lp = _sum_rightmost_except(lp, keep=(particle_dim, data_dim))
                    local = local + sign * lp
                    scale = site["scale"]
                    if trace is guide_trace:
                        has_local_latent = True
                else:
                    lp = _sum_rightmost_except(lp, keep=(particle_dim,))
                    glob = glob + sign * lp
                    if trace is guide_trace:
                        has_global_latent = True
        if has_local_latent and has_global_latent:
            raise NotImplementedError(
                "the Renyi/IWAE objective needs latents either all local or all global"
            )
        a = 1.0 - self.alpha
        if has_local_latent:  # local: log-mean-exp per data point, then scale
            bound = torch.logsumexp(a * local, dim=0) - math.log(K)
            total = scale * bound.sum() / a + _mean(glob)
        else:  # global: one weight per particle for the whole (scaled) data set
            log_w = glob + (scale * local.sum(-1) if torch.is_tensor(local) else 0.0)
            total = (torch.logsumexp(a * log_w, dim=0) - math.log(K)) / a
        return -total

    def loss(self, model, guide, *args, **kwargs):
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()


def _sum_rightmost_except(t: torch.Tensor, keep: tuple[int, ...]) -> torch.Tensor:
    """Sum a (K, ..., B)-shaped log-prob over every dim but the particle (and data) dims.

    The result has shape (K,) or (K, B); size-1 broadcast dims are dropped.
    """
    if not torch.is_tensor(t):
        return t
    ndim = max(t.dim(), max(-d for d in keep))
    t = t.reshape((1,) * (ndim - t.dim()) + t.shape)
    keep_pos = sorted(ndim + d for d in keep)
    drop = [i for i in range(ndim) if i not in keep_pos]
    t = t.sum(drop) if drop else t
    return t


def _mean(t):
    return t.mean(0).sum() if torch.is_tensor(t) else t


class _LossModule(torch.nn.Module):
    """``objective.differentiable_loss(model, guide, x, num_data)`` as a module of x."""

    def __init__(self, objective, model, guide, num_data):
        super().__init__()
        self.objective, self.model_fn, self.guide_fn, self.num_data = objective, model, guide, num_data
        # register the modules that own the parameters, so tracing sees them as inputs
        self.owners = torch.nn.ModuleList(
            {id(m): m for m in (getattr(model, "__self__", None), getattr(guide, "__self__", guide))
             if isinstance(m, torch.nn.Module)}.values()
        )

    def forward(self, x):
        objective, kwargs = self.objective, {"num_data": self.num_data}
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


def simplify_graph(graph) -> None:
    """Remove the trace's no-op operations, keeping every result bit for bit.

    A Pyro program traced at one batch shape carries bookkeeping that is constant at that
    shape (the plate's subsample indices and scale) and operations that do nothing
    there: ``x + 0``, ``x * 1``, ``x / 1``, a reshape, expand, slice or cast to the
    shape and type ``x`` has, a broadcast of tensors of one shape. Folding the first and
    dropping the others leaves the same values and the same gradients (those operations'
    backward passes are exact identities too) for a fraction of the per-step cost of a
    small model. Sizes come from the types the trace recorded for the example input, so
    the graph is valid for that shape only (:class:`Traced` keys graphs by shape).
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
                if len(parts) == len(unpacked) and all(_same_type(a, b) for a, b in zip(parts, unpacked)):
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

    def differentiable_loss(self, model, guide, x, num_data=None):
        key = (_identity(model), _identity(guide), tuple(x.shape), x.dtype, x.device, num_data)
        fn = self.compiled.get(key)
        if fn is None:
            module = _LossModule(self.objective, model, guide, num_data)
            # tracing runs the objective once: keep the random numbers it draws out of
            # the stream, so that jit and plain objectives give the same draws
            devices = [x.device] if x.device.type == "cuda" else []
            with warnings.catch_warnings(), torch.random.fork_rng(devices=devices):
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                fn = torch.jit.trace(module, (x,), check_trace=False)
                if self.simplify:
                    try:
                        simplify_graph(fn.graph)
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


OBJECTIVES = {
    "elbo": infer.Trace_ELBO,
    "meanfield": infer.TraceMeanField_ELBO,
    "enum": infer.TraceEnum_ELBO,
    "iwae": lambda **kw: RenyiBound(alpha=0.0, **kw),
    "renyi": lambda **kw: RenyiBound(alpha=0.5, **kw),
}
OBJECTIVES.update({f"jit_{name}": name for name in list(OBJECTIVES)})


def make_objective(name: str, *, num_particles: int = 1, max_plate_nesting: int = 1) -> ELBO:
    """The objective called ``name`` (see the module docstring).

    ``num_particles`` > 1 averages (ELBO) or importance-weights (``iwae``, ``renyi``)
    that many guide draws, vectorised. ``iwae``/``renyi`` default to K = 2.
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
    if int(num_particles) < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    kw = dict(max_plate_nesting=max_plate_nesting, num_particles=int(num_particles))
    if name in ("iwae", "renyi"):
        kw["num_particles"] = max(kw["num_particles"], 2)
    else:
        kw["vectorize_particles"] = kw["num_particles"] > 1
    if name.startswith("jit_"):
        return Traced(make_objective(name[4:], num_particles=num_particles, max_plate_nesting=max_plate_nesting))
    return OBJECTIVES[name](**kw)

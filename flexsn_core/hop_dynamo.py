"""Teach Dynamo (``torch.compile``) the ``flex_sn_scan`` HigherOrderOperator.

Dynamo refuses a HigherOrderOperator it has no rule for ("unsupported
HigherOrderOperator"). Its rules live in a table keyed by operator name
(``torch._dynamo.variables.higher_order_ops._hop_name_to_variable_class``, in
torch 2.11 and 2.13 alike); we add one. A call to ``flex_sn_scan`` under Dynamo
then becomes, in order of preference:

1. **one graph node** ``flex_sn_scan(body, num_inputs, num_states, num_outputs,
   *tensors, *lifted, output_template_specs=...)`` whose ``body`` is the core
   traced by Dynamo as a subgraph (tensors the core closes over are lifted into
   extra arguments). AOTAutograd later runs the operator's Autograd kernel on
   it, which unrolls the scan into the core's ops, forward and backward.
   With ``T == 0`` the output templates come from the traced body, so no
   ``output_template_specs`` are needed inside a compiled function.
2. **the unrolled loop**: Dynamo traces :func:`flexsn_core.hop.traced_scan`
   (the eager loop) inline. Used when the body cannot be traced as a subgraph
   or Dynamo's internals are not what this module expects (they are private
   and change between releases); logged at debug level, never an error.

Both forms give zero graph breaks. Importing Dynamo costs seconds, so the rule
is installed when Dynamo is first imported (an import hook), or at once if it
already is.
"""

from __future__ import annotations

import logging
from typing import Any

from .import_hooks import after_import

__all__ = ["install", "ensure_registered", "registered"]

logger = logging.getLogger("flexsn_core.hop")

_STATE: dict[str, Any] = {"op": None, "constants": (), "registered": False, "tried": False}


def registered() -> bool:
    """Whether the Dynamo rule is in place (False until Dynamo has been imported)."""
    return bool(_STATE["registered"])


def ensure_registered() -> bool:
    """Import Dynamo if needed and register; whether the rule is in place."""
    if _STATE["op"] is None:
        return False
    if not _STATE["tried"]:
        import torch._dynamo  # noqa: F401  (the import hook registers)

        _register()
    return registered()


def install(op: Any, constants: tuple[Any, ...] = ()) -> None:
    """Register the rule for ``op`` now if Dynamo is loaded, else when it is first imported.

    ``constants`` are functions Dynamo should call at trace time and treat as
    constants (``torch.compiler.assume_constant_result``): checks it cannot trace.
    """
    _STATE["op"] = op
    _STATE["constants"] = tuple(constants)
    after_import("torch._dynamo", _register)


def _register() -> None:
    if _STATE["tried"] or _STATE["op"] is None:
        return
    _STATE["tried"] = True
    import torch

    for fn in _STATE["constants"]:  # public API: no drift guard needed
        torch.compiler.assume_constant_result(fn)
    try:
        from torch._dynamo.variables import higher_order_ops as hov

        table = hov._hop_name_to_variable_class
        base = hov.TorchHigherOrderOperatorVariable
    except Exception as exc:  # noqa: BLE001 - private internals moved: compile the loop instead
        logger.debug("flex_sn_scan: no Dynamo rule (%s: %s); torch.compile unrolls the eager loop", type(exc).__name__, exc)
        return
    table[_STATE["op"].__name__] = _variable_class(base)
    _STATE["registered"] = True


class _Drift(Exception):
    """Dynamo's internals are not what the one-node form expects."""


def _variable_class(base: type) -> type:
    class FlexSNScanVariable(base):  # type: ignore[misc, valid-type]
        """Dynamo's view of a ``flex_sn_scan`` call (see the module docstring)."""

        _HOP_NAME = "flexsn_core.flex_sn_scan"
        # A graph break in the scan (e.g. the arity error) behaves as in plain Python code:
        # without fullgraph the call runs eagerly (and raises its own error).
        _ALLOW_FALLBACK_TO_EAGER = True

        def call_function(self, tx: Any, args: Any, kwargs: Any) -> Any:
            args, kwargs = list(args), dict(kwargs)
            error = _arity_error(args)
            if error is None:
                try:
                    return _one_node(self, tx, args, kwargs)
                except Exception as exc:  # noqa: BLE001 - any failure here has a working fallback
                    logger.debug(
                        "flex_sn_scan: tracing the core as one subgraph failed (%s: %s); unrolling the loop",
                        type(exc).__name__, exc,
                    )
            return _unrolled(tx, args, kwargs, error)

    return FlexSNScanVariable


def _constant(vt: Any) -> Any:
    try:
        return vt.as_python_constant()
    except Exception as exc:  # noqa: BLE001
        raise _Drift(f"{vt} is not a constant") from exc


def _arity_error(args: list[Any]) -> str | None:
    """The eager arity check, run here at trace time on the real function (Dynamo cannot trace it)."""
    from .hop import scan_arity_error

    if len(args) < 4:
        return None
    fn = getattr(args[0], "fn", None)
    if fn is None:
        get = getattr(args[0], "get_function", None)
        try:
            fn = get() if callable(get) else None
        except Exception:  # noqa: BLE001 - a closure made inside the compiled region: no function yet
            fn = None
    try:
        ni, ns = (int(_constant(v)) for v in args[1:3])
    except (_Drift, TypeError, ValueError):
        return None
    if not callable(fn):
        return None
    return scan_arity_error(fn, ni, ns, len(args) - 4)


def _unrolled(tx: Any, args: list[Any], kwargs: dict[str, Any], error: str | None) -> Any:
    """Trace :func:`flexsn_core.hop.traced_scan` inline: the loop unrolled into the graph."""
    from torch._dynamo.variables.base import VariableTracker

    from .hop import traced_scan

    if error is not None:
        kwargs["arity_error"] = VariableTracker.build(tx, error)
    return VariableTracker.build(tx, traced_scan).call_function(tx, args, kwargs)


def _one_node(var: Any, tx: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    import torch
    from torch._dynamo.variables import higher_order_ops as hov
    from torch._dynamo.variables.builder import wrap_fx_proxy
    from torch._dynamo.variables.constant import ConstantVariable
    from torch._dynamo.variables.tensor import TensorVariable

    from .hop import run_scan

    if len(args) < 5 or set(kwargs) - {"output_template_specs"}:
        raise _Drift("unexpected arguments")
    body = args[0]
    ni, ns, no = (_constant(v) for v in args[1:4])
    if not all(isinstance(n, int) for n in (ni, ns, no)) or ni < 1:
        raise _Drift("counts are not constant ints")
    flat = args[4:]
    if len(flat) < ni + ns or not all(isinstance(v, TensorVariable) for v in flat):
        raise _Drift("arguments are not tensors")
    specs = _constant(kwargs["output_template_specs"]) if "output_template_specs" in kwargs else None
    examples = [v.as_proxy().node.meta["example_value"] for v in flat]
    T = examples[0].shape[0]
    if any(int(e.shape[0]) != int(T) for e in examples[:ni]):
        raise _Drift("inputs disagree on T")  # the unrolled loop raises the eager error
    # One step of each input sequence: x[0], or an empty tensor of the step's shape when T == 0.
    if int(T) > 0:
        steps = [v.call_method(tx, "__getitem__", [ConstantVariable.create(0)], {}) for v in flat[:ni]]
    else:
        steps = [
            v.call_method(tx, "new_empty", [ConstantVariable.create(tuple(e.shape[1:]))], {})
            for v, e in zip(flat[:ni], examples)
        ]
    body_args = [*steps, *flat[ni:]]
    result = hov.speculate_subgraph(
        tx, body, body_args, {}, "flex_sn_scan", source_target=var.value, set_subgraph_inputs="flatten_manual",
    )
    if not (isinstance(result, tuple) and len(result) == 3):
        raise _Drift(f"speculate_subgraph returned {type(result).__name__} of {len(result)}")
    _, graph, lifted = result
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) < len(body_args):
        raise _Drift("the body has fewer inputs than arguments")
    inner_to_outer = {getattr(inner, "node", inner): outer for outer, inner in dict(lifted).items()}
    try:
        extra = [inner_to_outer[p] for p in placeholders[len(body_args):]]
    except KeyError as exc:
        raise _Drift("a body input is neither an argument nor a lifted value") from exc
    returns = [n for n in graph.nodes if n.op == "output"][0].args[0]
    returns = list(returns) if isinstance(returns, (tuple, list)) else [returns]
    if len(returns) != no + ns:
        raise _Drift("the core returns a different number of values")  # the unrolled loop raises the eager error
    if specs is None and int(T) == 0 and no:
        specs = tuple((tuple(r.meta["example_value"].shape), r.meta["example_value"].dtype) for r in returns[:no])

    gm = torch.fx.GraphModule(tx.output.nn_modules, graph)
    name = tx.output.install_subgraph("flex_sn_scan_body", gm)
    body_node = hov.make_attr(tx, name)
    proxy_args = (body_node, ni, ns, no, *(v.as_proxy() for v in flat), *extra)
    # Output metadata (shapes, dtypes, requires_grad): the eager loop on fake tensors.
    fake_args = [p.node.meta["example_value"] for p in proxy_args[4:]]
    with tx.fake_mode:
        example = run_scan(gm, ni, ns, no, fake_args, specs, True)
    proxy = tx.output.create_proxy(
        "call_function", var.value, proxy_args, {} if specs is None else {"output_template_specs": specs}
    )
    return wrap_fx_proxy(tx=tx, proxy=proxy, example_value=tuple(example))

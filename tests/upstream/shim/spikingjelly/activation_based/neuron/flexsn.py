"""spikingjelly.activation_based.neuron.flexsn -> flexsn_core's FlexSN and FlexSNKernel."""

from flexsn_core import FlexSN, FlexSNKernel  # noqa: F401

from .._internal import missing

_make_inductor_final_state_warmup_args = missing("neuron.flexsn._make_inductor_final_state_warmup_args")


def __getattr__(name: str):  # noqa: ANN202 - other private helpers of SpikingJelly's module
    if name.startswith("_"):
        return missing(f"neuron.flexsn.{name}")
    raise AttributeError(name)

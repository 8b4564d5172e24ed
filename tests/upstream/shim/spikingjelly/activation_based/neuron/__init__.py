"""spikingjelly.activation_based.neuron: FlexSN only."""

from flexsn_core import FlexSN, FlexSNKernel  # noqa: F401

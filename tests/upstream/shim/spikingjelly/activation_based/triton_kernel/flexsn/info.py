"""spikingjelly.activation_based.triton_kernel.flexsn.info -> flexsn_core's FlexSNInfo."""

from flexsn_core.codegen.kernels import FlexSNInfo  # noqa: F401

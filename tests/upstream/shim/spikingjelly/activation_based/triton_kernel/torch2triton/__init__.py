"""spikingjelly.activation_based.triton_kernel.torch2triton: SpikingJelly's code generator (internal)."""

import sys

from ..._internal import InternalModule

for _name in ("graph2triton", "torch2graph"):
    sys.modules[f"{__name__}.{_name}"] = InternalModule(f"triton_kernel.torch2triton.{_name}")  # type: ignore[assignment]

"""spikingjelly.activation_based.triton_kernel.flexsn: the HOP module maps; the rest are internals."""

import sys

from ..._internal import InternalModule

for _name in ("custom_ops", "template"):
    sys.modules[f"{__name__}.{_name}"] = InternalModule(f"triton_kernel.flexsn.{_name}")  # type: ignore[assignment]

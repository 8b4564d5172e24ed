"""spikingjelly.activation_based.triton_kernel.flexsn.hop -> flexsn_core.hop and flexsn_core.hop_lowerable."""

from flexsn_core.hop import (  # noqa: F401
    dynamo_hop_available,
    eager_scan,
    eager_scan_final_state,
    flex_sn_scan,
)
from flexsn_core.hop_lowerable import (  # noqa: F401
    lowerable_scan,
    lowerable_scan_available,
    lowerable_scan_final_state,
    lowerable_while_loop_available,
    lowerable_while_loop_scan,
    lowerable_while_loop_scan_final_state,
)

from ..._internal import missing


def __getattr__(name: str):  # noqa: ANN202
    if name.startswith("_"):
        return missing(f"triton_kernel.flexsn.hop.{name}")
    raise AttributeError(name)

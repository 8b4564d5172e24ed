"""spikingjelly.activation_based.surrogate -> flexsn_core.surrogate (the same catalogue)."""

from flexsn_core.surrogate import *  # noqa: F401,F403
from flexsn_core.surrogate import SurrogateFunction as SurrogateFunctionBase  # noqa: F401

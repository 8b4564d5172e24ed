"""spikingjelly.activation_based, mapped to flexsn_core (see tests/upstream/README.md)."""

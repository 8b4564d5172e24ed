"""A stand-in ``spikingjelly`` package that maps SpikingJelly's FlexSN names to flexsn_core.

Written for this adapter (no SpikingJelly code): it lets SpikingJelly's own
FlexSN test file import and run against flexsn_core. See tests/upstream/README.md.
"""

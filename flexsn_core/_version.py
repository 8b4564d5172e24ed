"""The code generator's version: part of every spec key (see ``flexsn_core/_codegen_sources.py``)."""

CODEGEN_VERSION = "7"

#: CODEGEN_VERSION -> sha256 of the codegen sources it stands for (``_codegen_sources.sources_sha256``).
#: Newest last; never edit an old line: ``python -m flexsn_core._codegen_sources --bump`` appends one.
CODEGEN_SOURCES_SHA256 = {
    "6": "34598a81def5682fde3033cb2ef2acc994b37f22d98d301d80394e8ea4663294",
    "7": "4c307a8f89e5d74adc317aea3fe855e429395166ae6b3c1e14e24c677a120a24",
}

"""The code generator's version: part of every spec key (see ``flexsn_core/_codegen_sources.py``)."""

CODEGEN_VERSION = "11"

#: CODEGEN_VERSION -> sha256 of the codegen sources it stands for (``_codegen_sources.sources_sha256``).
#: Newest last; never edit an old line: ``python -m flexsn_core._codegen_sources --bump`` appends one.
CODEGEN_SOURCES_SHA256 = {
    "6": "34598a81def5682fde3033cb2ef2acc994b37f22d98d301d80394e8ea4663294",
    "7": "42985285c6d91fec15cfc390274aa470c0381d2c0537c083c233f4100bea46fa",
    "8": "96e0dc1922324e6f15eca4ad4f203227a4312a95b37cf88630a88fe196201f1f",
    "9": "b44f642ba09dfac00c019770787bcdb08eb1376d71e3e870e542c7cf44266e61",
    "10": "f1776faf3f3d2d531ea3243ecd87b7682654c97494ecf762ba0654f580aca8ed",
    "11": "9c29663cd2fbb64b608bb51e52bd4a1a02c6daf0799c77ce6578be2b657e8965",
}

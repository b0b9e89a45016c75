"""Import-only stand-in for torchair (Ascend's graph compiler), which MindSpeed imports at import time
to register graph converters for its ops. Rehearsal runs are eager: nothing is converted."""

from torchair import ge  # noqa: F401


def register_fx_node_ge_converter(op):
    return lambda fn: fn

# The CANN that MindSpeed core_r0.16.0's README pairs with torch_npu 26.0.0 (no CANN runs here).
CANN_VERSION = "9.0.0"


def get_cann_version() -> str:
    return CANN_VERSION

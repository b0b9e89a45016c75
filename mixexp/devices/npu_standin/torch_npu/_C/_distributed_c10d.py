class ProcessGroupHCCL:
    class Options:
        """HCCL's process-group options: MindSpeed sets hccl_config on them; gloo ignores them."""

        def __init__(self):
            self.hccl_config = {}
            self.is_high_priority_stream = False

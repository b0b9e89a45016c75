def register_asd_hook(*tensors) -> None:
    """Ascend's silent-data-corruption detector: there is no NPU whose data could be corrupted."""

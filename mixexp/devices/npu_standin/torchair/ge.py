class Tensor:
    pass


class TensorSpec:
    pass


class DataType:
    pass

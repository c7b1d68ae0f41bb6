"""Where batches come from: sources load splits, batches iterate over them quickly."""

from nnrecipe.data.batches import iterate_batches, num_batches
from nnrecipe.data.splits import DataBundle, FileSplit, TensorSplit
from nnrecipe.data.build import build_data

__all__ = [
    "DataBundle",
    "FileSplit",
    "TensorSplit",
    "build_data",
    "iterate_batches",
    "num_batches",
]

"""Surgery: from a masked model to a smaller, faster artifact.

    sparse, report = to_sparse(model, x)             # CSR / BSR / dense per layer, by measured latency
    save_sparse(sparse, "model.sparse.safetensors"); load_sparse(path, factory())
    small, rows = low_rank(model, energy=0.9)        # truncated SVD; ranks from prunekit.allocate.RankProblem + allocators
    shared = deep_compress(model, data.train, cfg)   # k-means weight sharing, centroids fine-tuned
    write_deep_compressed(shared, "model.pkdc"); read_deep_compressed("model.pkdc")
    folded, pairs = fold_batchnorm(model, x)         # BN folded into the conv / linear before it
    q = quantize_int8(model)                         # int8 weights, per-channel scales
    gpu, info = to_semi_structured(model)            # 2:4 on CUDA sparse tensor cores, dense fallback
    threads, ms = fastest_threads(model, x)          # 1 vs 2 threads, measured
    save_exported(model, x, "model.pt2")             # torch.export program, reloaded and checked

Every function returns a new model and leaves the given one (masks included) unchanged.
"""

from .batchnorm import find_foldable, fold_batchnorm
from .compressed_file import deep_compressed_extra, read_deep_compressed, write_deep_compressed
from .exported import save_exported
from .lowrank import energy_rank, factorize, low_rank, svd_factors, useful_rank
from .quantize import Int8Layer, model_bytes, quantize_int8
from .semi_structured import is_two_four, to_semi_structured
from .sparse import SparseReport, to_sparse
from .sparse_io import load_sparse, read_sparse_header, save_sparse
from .sparse_layers import SparseConv2d, SparseLinear
from .timing import fastest_threads, model_latencies, num_threads, paired_medians
from .weight_sharing import bake_shared, deep_compress, kmeans_1d, share_weights

__all__ = ["Int8Layer", "SparseConv2d", "SparseLinear", "SparseReport", "bake_shared",
           "deep_compress", "deep_compressed_extra", "energy_rank", "factorize", "fastest_threads", "find_foldable",
           "fold_batchnorm", "is_two_four", "kmeans_1d", "load_sparse", "low_rank", "model_bytes",
           "model_latencies", "num_threads", "paired_medians", "quantize_int8", "read_deep_compressed",
           "read_sparse_header", "save_exported", "save_sparse", "share_weights", "svd_factors", "to_semi_structured",
           "to_sparse", "useful_rank", "write_deep_compressed"]

"""Tiled VAE encode/decode, as diffusers' AutoencoderKL does after `enable_tiling()`.

Images larger than the VAE's native size are processed in tiles of that size overlapping by a
quarter; each tile's output is blended linearly into its upper and left neighbours, so memory
stays bounded and the result equals diffusers' with tiling on. Written by hand with numpy because
the runtime is torch-free; follows diffusers 0.39.0 AutoencoderKL._tiled_encode / tiled_decode.
"""

from typing import Callable

import numpy as np

OVERLAP = 0.25


def _blend(previous: np.ndarray, tile: np.ndarray, extent: int, axis: int) -> np.ndarray:
    """Fade `previous`'s last `extent` rows/columns (axis 2/3) into `tile`'s first ones, in place."""
    extent = min(previous.shape[axis], tile.shape[axis], extent)
    for k in range(extent):
        here = [slice(None)] * 4
        there = [slice(None)] * 4
        here[axis], there[axis] = k, k - extent
        tile[tuple(here)] = previous[tuple(there)] * (1 - k / extent) + tile[tuple(here)] * (k / extent)
    return tile


def tiled(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, in_tile: int, out_tile: int) -> np.ndarray:
    """Apply `run` (the VAE encoder or decoder) over x's last two axes in overlapping tiles of
    `in_tile` (outputs `out_tile` for a full tile), blending the seams."""
    stride = int(in_tile * (1 - OVERLAP))
    extent = int(out_tile * OVERLAP)
    limit = out_tile - extent
    rows = [
        [run(np.ascontiguousarray(x[:, :, i : i + in_tile, j : j + in_tile])) for j in range(0, x.shape[3], stride)]
        for i in range(0, x.shape[2], stride)
    ]
    result_rows = []
    for i, row in enumerate(rows):
        result_row = []
        for j, tile in enumerate(row):
            if i > 0:
                tile = _blend(rows[i - 1][j], tile, extent, axis=2)
            if j > 0:
                tile = _blend(row[j - 1], tile, extent, axis=3)
            result_row.append(tile[:, :, :limit, :limit])
        result_rows.append(np.concatenate(result_row, axis=3))
    return np.concatenate(result_rows, axis=2)

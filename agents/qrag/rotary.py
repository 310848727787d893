"""Relative chunk positions and their rotary encoding (the paper's relative positional encoding).

A chunk's position is not its index but where it sits relative to the chunks already selected:
segment ``j`` (how many selected chunks precede it, counting itself when selected) times ``step``,
plus its place inside that gap spread over ``[0, span]``. The spread is the same for any document
length, which is why a model trained on 4K tokens reads 1M-token documents the same way.
The position enters Q only through a rotation of the chunk embedding, so re-positioning after a
step is elementwise work on cached vectors: the encoder never runs again on a chunk.
"""

from __future__ import annotations

import numpy as np
import torch


def relative_positions(
    num_chunks: int, selected: list[int] | np.ndarray, step: float = 20.0, span: float = 18.0, integer: bool = False
) -> np.ndarray:
    """Positions ``rho_t(i)`` of every chunk given the selected ones (any order).

    ``integer=True`` truncates to whole positions, as the authors' lookup table does.
    """
    bounds = np.sort(np.asarray(selected, dtype=np.int64))
    index = np.arange(num_chunks)
    segment = np.searchsorted(bounds, index, side="right")
    starts = np.concatenate([[0], bounds])[segment]
    ends = np.concatenate([bounds, [num_chunks]])[segment]
    lengths = ends - starts
    offset = np.where(lengths > 1, span * (index - starts) / np.maximum(lengths - 1, 1), 0.0)
    positions = segment * step + offset
    return np.floor(positions) if integer else positions


def relative_positions_batch(
    num_chunks: np.ndarray, selected: np.ndarray, width: int, step: float = 20.0, span: float = 18.0,
    integer: bool = False
) -> np.ndarray:
    """:func:`relative_positions` of ``B`` episodes at once: ``(B, width)``, zero past each episode's chunks.

    ``num_chunks`` ``(B,)``; ``selected`` ``(B, S)`` chunk ids in any order, padded with -1. The same float64
    operations in the same order as :func:`relative_positions`, so every position is bit-identical to it;
    the learner calls this once per step for all its episodes instead of once per episode.
    """
    num_chunks = np.asarray(num_chunks, dtype=np.int64)
    selected = np.asarray(selected, dtype=np.int64)
    rows, slots = selected.shape
    count = (selected >= 0).sum(axis=1)
    beyond = np.iinfo(np.int64).max
    bounds = np.sort(np.where(selected >= 0, selected, beyond), axis=1)
    index = np.arange(width)
    segment = (bounds[:, None, :] <= index[None, :, None]).sum(axis=-1)
    starts = np.take_along_axis(np.concatenate([np.zeros((rows, 1), dtype=np.int64), bounds], axis=1), segment, axis=1)
    ends_table = np.concatenate([bounds, num_chunks[:, None]], axis=1)
    ends_table = np.where(np.arange(slots + 1)[None, :] >= count[:, None], num_chunks[:, None], ends_table)
    ends = np.take_along_axis(ends_table, segment, axis=1)
    lengths = ends - starts
    offset = np.where(lengths > 1, span * (index - starts) / np.maximum(lengths - 1, 1), 0.0)
    positions = segment * step + offset
    positions = np.floor(positions) if integer else positions
    return np.where(index[None, :] < num_chunks[:, None], positions, 0.0)


def rotary_frequencies(half_dim: int, base: float = 10_000.0) -> torch.Tensor:
    """``theta_j = base^(-2j / half_dim)`` for the ``half_dim / 2`` interleaved pairs of one half."""
    if half_dim % 2:
        raise ValueError(f"each half of the embedding must have even size, got {half_dim}")
    return base ** (-torch.arange(0, half_dim, 2, dtype=torch.float32) / half_dim)


def rotation(positions: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """The unit phases ``exp(i p theta_j)`` for positions ``(...)``: complex, shape ``(..., d / 4)``.

    Computed once per step for the whole batch and shared by the online and target networks, whose
    chunks sit at the same positions.
    """
    angles = positions.unsqueeze(-1).float() * frequencies.to(positions.device)
    return torch.complex(torch.cos(angles), torch.sin(angles))


def apply_rotation(vectors: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """Apply ``R(p)`` to each half of ``vectors`` (``(..., d)``) given :func:`rotation`'s phases.

    Pairs ``(x_2j, x_2j+1)`` of each half turn by ``p * theta_j``; both halves use the same angles.
    ``<R(p) x, R(p) y> = <x, y>`` and ``<R(p) x, R(q) y>`` depends only on ``q - p``. A pair is read as
    the complex number ``x_2j + i x_2j+1`` and multiplied by its phase: one pass over the vectors
    instead of the eight of separate cos/sin products and a stack (the rotation was about a third of
    the learner's time, issue 15), and the same ``x0 cos - x1 sin``, ``x0 sin + x1 cos`` in float32
    (``tests/test_learner.py`` checks it bit for bit against that formula).
    """
    *lead, dim = vectors.shape
    dtype = vectors.dtype
    pairs = vectors.float().reshape(*lead, 2, dim // 4, 2)
    if pairs.stride(-1) != 1 or any(stride % 2 for stride in pairs.stride()[:-1]):
        pairs = pairs.contiguous()
    turned = torch.view_as_complex(pairs) * phase.unsqueeze(-2)
    return torch.view_as_real(turned).reshape(*lead, dim).to(dtype)


def rotate(vectors: torch.Tensor, positions: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """``R(p)`` applied to ``vectors`` at ``positions`` (see :func:`apply_rotation`)."""
    return apply_rotation(vectors, rotation(positions, frequencies))

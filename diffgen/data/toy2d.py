"""Two-dimensional toy distributions, for the mutual-information estimates.

Each distribution is a function (rng, num) -> float32 (num, 2) of i.i.d. points, registered
in DISTRIBUTIONS under the name that `toy2d:<name>` uses. Points are used as they are (no
scaling to [-1, 1]); every distribution lies within about [-2.5, 2.5]^2.
"""
import numpy as np

from diffgen.registry import Registry

DISTRIBUTIONS = Registry('toy2d distribution')
_STREAM = 0x7D2D  # separates the toy2d random stream from the others drawn from the seed


@DISTRIBUTIONS.register('gmm8')
def gmm8(rng: np.random.Generator, num: int) -> np.ndarray:
    """Equal mixture of 8 Gaussians, std 0.1, centred at 2 (cos 2πk/8, sin 2πk/8)."""
    angles = 2 * np.pi * rng.integers(8, size=num) / 8
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return (centres + 0.1 * rng.standard_normal((num, 2))).astype(np.float32)


@DISTRIBUTIONS.register('gaussian')
def gaussian(rng: np.random.Generator, num: int) -> np.ndarray:
    """The standard 2-D Gaussian N(0, I)."""
    return rng.standard_normal((num, 2)).astype(np.float32)


@DISTRIBUTIONS.register('two_moons')
def two_moons(rng: np.random.Generator, num: int) -> np.ndarray:
    """Two interleaved half circles of radius 1 (as sklearn's make_moons), noise std 0.05,
    shifted by (-0.5, -0.25) so that they are centred at the origin."""
    angles = np.pi * rng.random(num)
    upper = rng.random(num) < 0.5
    x = np.where(upper, np.cos(angles), 1 - np.cos(angles)) - 0.5
    y = np.where(upper, np.sin(angles), 0.5 - np.sin(angles)) - 0.25
    points = np.stack([x, y], axis=1) + 0.05 * rng.standard_normal((num, 2))
    return points.astype(np.float32)


@DISTRIBUTIONS.register('checkerboard')
def checkerboard(rng: np.random.Generator, num: int) -> np.ndarray:
    """Uniform on the 8 dark cells of a 4x4 board of unit cells covering [-2, 2]^2: cell
    (column i, row j) is dark iff i + j is even."""
    column = rng.integers(4, size=num)
    row = 2 * rng.integers(2, size=num) + column % 2
    cell = np.stack([column, row], axis=1)
    return (cell - 2 + rng.random((num, 2))).astype(np.float32)


def sample(name: str, num: int, seed: int) -> np.ndarray:
    """num points (float32 (num, 2)) of the named distribution, a deterministic function of
    (name, num, seed)."""
    rng = np.random.default_rng([seed, _STREAM])
    return DISTRIBUTIONS[name](rng, num)

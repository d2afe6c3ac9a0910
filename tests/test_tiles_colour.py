"""The shared tile / grid / patch and Lab-colour operations (harness.data.tiles, harness.data.colour)
against hand-computed cases."""

import itertools
import math

import numpy as np
import pytest
import torch

from harness.core.errors import ConfigError
from harness.data.colour import (
    ab_gamut_bins,
    drop_channels,
    lab_to_rgb,
    rebalancing_weights,
    rgb_to_lab,
    smoothed_prior,
    soft_encode,
)
from harness.data.tiles import (
    assemble,
    crop_at,
    gradient_energy,
    grid_tiles,
    hamming_permutations,
    min_hamming_distance,
    permute_tiles,
    split_tiles,
    window_energy_argmax,
)


# ---------------------------------------------------------------------------- tiles and grids
def test_grid_tiles_without_jitter_are_the_centred_blocks():
    x = torch.arange(12 * 12, dtype=torch.float32).view(1, 1, 12, 12)
    t = grid_tiles(x, grid=3, gap=2)              # cells of 4 px, tiles of 2 px at offset gap // 2 = 1
    assert t.shape == (1, 9, 1, 2, 2)
    for r, c in itertools.product(range(3), range(3)):
        assert torch.equal(t[0, 3 * r + c, 0], x[0, 0, 4 * r + 1:4 * r + 3, 4 * c + 1:4 * c + 3])


def test_grid_tiles_with_jitter_stay_inside_their_cells_and_vary():
    x = torch.arange(2 * 3 * 15 * 15, dtype=torch.float32).view(2, 3, 15, 15)
    g = torch.Generator().manual_seed(0)
    t = grid_tiles(x, grid=3, gap=2, gen=g)        # cells of 5 px, tiles of 3 px, offsets 0..2
    offsets = set()
    for b, k in itertools.product(range(2), range(9)):
        r, c = divmod(k, 3)
        v = int(t[b, k, 0, 0, 0].item()) - b * 3 * 225           # value = y * 15 + x of the tile's corner
        y0, x0 = divmod(v, 15)
        assert 5 * r <= y0 <= 5 * r + 2 and 5 * c <= x0 <= 5 * c + 2
        assert torch.equal(t[b, k], x[b, :, y0:y0 + 3, x0:x0 + 3])  # a contiguous block, every channel
        offsets.add((y0 - 5 * r, x0 - 5 * c))
    assert len(offsets) > 3                                          # the jitter moves tiles around


def test_grid_that_does_not_fit_is_refused():
    with pytest.raises(ConfigError, match="does not fit"):
        grid_tiles(torch.zeros(1, 3, 6, 6), grid=3, gap=2)


def test_split_and_assemble_are_inverse_and_row_major():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    t = split_tiles(x, 2)
    assert t.shape == (2, 4, 1, 2, 2)
    assert t[0, 1, 0].tolist() == [[2.0, 3.0], [6.0, 7.0]]           # top-right tile
    assert t[0, 2, 0].tolist() == [[8.0, 9.0], [12.0, 13.0]]         # bottom-left tile
    assert torch.equal(assemble(t), x)


def test_permute_tiles_gathers_by_permutation():
    tiles = torch.arange(2 * 3, dtype=torch.float32).view(2, 3, 1, 1, 1) * torch.ones(2, 3, 1, 2, 2)
    perms = torch.tensor([[2, 0, 1], [1, 2, 0]])
    out = permute_tiles(tiles, perms)
    assert out[:, :, 0, 0, 0].tolist() == [[2.0, 0.0, 1.0], [4.0, 5.0, 3.0]]


def test_hamming_permutations_of_three_reach_the_maximal_distance():
    # any two distinct permutations of 3 differ in 2 or 3 places; a set of 3 with pairwise
    # distance 3 exists (the cyclic shifts), and greedy max-min selection finds one
    p = hamming_permutations(3, 3, seed=0)
    assert min_hamming_distance(p) == 3
    assert sorted(map(tuple, p.tolist())) in (sorted([(0, 1, 2), (1, 2, 0), (2, 0, 1)]),
                                              sorted([(0, 2, 1), (2, 1, 0), (1, 0, 2)]))


def test_hamming_permutations_of_nine_are_distinct_deterministic_and_far_apart():
    p = hamming_permutations(100, 9, seed=0)
    assert p.shape == (100, 9) and len({tuple(r) for r in p.tolist()}) == 100
    assert all(sorted(r) == list(range(9)) for r in p.tolist())
    # the minimum pairwise distance, by a plain double loop
    rows = p.tolist()
    brute = min(sum(a != b for a, b in zip(rows[i], rows[j])) for i in range(100) for j in range(i + 1, 100))
    assert brute == min_hamming_distance(p) and brute >= 6          # random 100-sets of 9! have minimum 2-4
    assert torch.equal(p, hamming_permutations(100, 9, seed=0))
    assert not torch.equal(p, hamming_permutations(100, 9, seed=1))


def test_impossible_permutation_count_is_refused():
    with pytest.raises(ConfigError, match="at most 6"):
        hamming_permutations(7, 3)


def test_highest_gradient_window_is_found():
    img = torch.zeros(1, 1, 10, 10)
    img[0, 0, 6:9, 2:5] = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])   # texture at rows 6-8, cols 2-4
    e = gradient_energy(img)
    # central differences by hand: (7, 3) has left/right 0/0 and up/down 0/0: e = 0; (6, 3) has
    # left/right 1/1 (gx = 0) and up/down 0/1 (gy = 1/2): e = 1/4; (7, 2): left/right 0/1, up/down 1/1: e = 1/4
    assert e[0, 7, 3].item() == 0.0 and e[0, 6, 3].item() == pytest.approx(0.25)
    assert e[0, 7, 2].item() == pytest.approx(((1 - 0) / 2) ** 2 + ((1 - 1) / 2) ** 2)
    y0, x0 = window_energy_argmax(e, 3)
    sums = {(y, x): e[0, y:y + 3, x:x + 3].sum().item() for y in range(8) for x in range(8)}
    best = max(sums.values())
    assert sums[(int(y0), int(x0))] == pytest.approx(best)                    # a brute-force maximum
    assert int(y0) <= 7 < int(y0) + 3 and int(x0) <= 3 < int(x0) + 3          # on the texture
    assert torch.equal(crop_at(img, y0, x0, 3), img[:, :, int(y0):int(y0) + 3, int(x0):int(x0) + 3])


# ---------------------------------------------------------------------------- colour
def test_lab_of_reference_colours():
    # sRGB (D65) white, black and red in CIE Lab: (100, 0, 0), (0, 0, 0), (53.24, 80.09, 67.20)
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).t().reshape(3, 3, 1)
    lab = rgb_to_lab(rgb).reshape(3, 3).t()
    assert np.allclose(lab[0].numpy(), [100, 0, 0], atol=1e-3)
    assert np.allclose(lab[1].numpy(), [0, 0, 0], atol=1e-3)
    assert np.allclose(lab[2].numpy(), [53.24, 80.09, 67.20], atol=0.02)


def test_lab_round_trip():
    x = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(lab_to_rgb(rgb_to_lab(x)), x, atol=1e-4)


def test_ab_gamut_bins_are_the_cells_the_srgb_gamut_reaches():
    bins = ab_gamut_bins(10.0)
    assert bins.shape == (261, 2)
    s = {tuple(b) for b in bins.int().tolist()}
    # the primaries' and secondaries' ab, rounded to the 10-grid, are bins
    for c in ([1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0], [0.5, 0.5, 0.5]):
        lab = rgb_to_lab(torch.tensor(c, dtype=torch.float32).view(3, 1, 1)).flatten()
        assert (int(round(lab[1].item() / 10)) * 10, int(round(lab[2].item() / 10)) * 10) in s, c
    # far corners of the ab square are not (no sRGB colour is that saturated)
    assert (-110, -110) not in s and (100, 100) not in s and (0, 0) in s
    # an independent sampling of the whole RGB cube (every 5th 8-bit level) reaches only bins of the table
    v = torch.arange(0, 256, 5, dtype=torch.float32) / 255
    cube = torch.stack(torch.meshgrid(v, v, v, indexing="ij"), 0).reshape(3, -1, 1)
    ab = torch.round(rgb_to_lab(cube).reshape(3, -1)[1:] / 10).int().t() * 10
    assert {tuple(r) for r in ab.tolist()} <= s


def test_soft_encoding_at_a_bin_centre():
    bins = ab_gamut_bins(10.0)
    z = soft_encode(torch.tensor([[0.0, 0.0]]), bins, k=5, sigma=5.0)[0]
    # the centre bin at distance 0 and its 4 neighbours at distance 10: weights 1 : e^-2 (x4)
    den = 1 + 4 * math.exp(-2)
    centre = int(((bins[:, 0] == 0) & (bins[:, 1] == 0)).nonzero())
    assert z.sum().item() == pytest.approx(1.0)
    assert z[centre].item() == pytest.approx(1 / den, rel=1e-5)
    for da, db in ((10, 0), (-10, 0), (0, 10), (0, -10)):
        j = int(((bins[:, 0] == da) & (bins[:, 1] == db)).nonzero())
        assert z[j].item() == pytest.approx(math.exp(-2) / den, rel=1e-5)
    assert int((z > 0).sum()) == 5


def test_rebalancing_weights_hand_case():
    # p = (0.5, 0.3, 0.2), lambda = 0.5, Q = 3: w ∝ 1 / (0.5 p + 1/6), normalised so sum p w = 1
    p = torch.tensor([0.5, 0.3, 0.2])
    raw = [1 / (0.25 + 1 / 6), 1 / (0.15 + 1 / 6), 1 / (0.10 + 1 / 6)]
    e = 0.5 * raw[0] + 0.3 * raw[1] + 0.2 * raw[2]
    assert np.allclose(rebalancing_weights(p, 0.5).numpy(), [r / e for r in raw], rtol=1e-6)
    assert np.allclose(rebalancing_weights(p, 1.0).numpy(), [1.0, 1.0, 1.0], rtol=1e-6)   # lambda 1: uniform


def test_smoothed_prior_spreads_mass_to_neighbours():
    bins = torch.tensor([[0.0, 0.0], [10.0, 0.0], [50.0, 0.0]])
    p = smoothed_prior(torch.tensor([1.0, 0.0, 0.0]), bins, sigma=5.0)
    # kernel weights from bin 0: 1, e^-2, e^-50 -> normalised
    k = np.array([1.0, math.exp(-2), math.exp(-50)])
    assert np.allclose(p.numpy(), k / k.sum(), rtol=1e-5)


def test_drop_channels_keeps_one_channel_and_faint_noise():
    x = torch.rand(8, 3, 6, 6, generator=torch.Generator().manual_seed(0)) + 1.0
    y = drop_channels(x, torch.Generator().manual_seed(1), noise=0.01)
    for i in range(8):
        kept = [c for c in range(3) if torch.equal(y[i, c], x[i, c])]
        assert len(kept) == 1
        others = [c for c in range(3) if c != kept[0]]
        assert y[i, others].abs().max() < 0.1 * x[i, kept[0]].std() + 1e-6

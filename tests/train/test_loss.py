"""The ISNet loss against a direct float64 numpy transcription of the Faster ISNet loss (Bassi et al.)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lrpgraph.errors import LrpgraphError
from lrpgraph.train.loss import (
    C1C2Tuner,
    ISNetLoss,
    gwrp,
    heatmap_loss,
    resize_mask,
    total_relevance,
)

# ---------------------------------------------------------------- numpy reference (section 5)


def np_adaptive_avg(m, h, w):
    """Average over the adaptive windows [floor(i H / h), ceil((i + 1) H / h))."""
    H, W = m.shape
    out = np.zeros((h, w))
    for i in range(h):
        r0, r1 = (i * H) // h, math.ceil((i + 1) * H / h)
        for j in range(w):
            c0, c1 = (j * W) // w, math.ceil((j + 1) * W / w)
            out[i, j] = m[r0:r1, c0:c1].mean()
    return out


def np_resize_mask(m, h, w):
    """Average pooling, then any foreground -> 1."""
    if m.shape == (h, w):
        return m.astype(np.float64)
    return (np_adaptive_avg(m, h, w) > 0).astype(np.float64)


def np_gwrp(x, d):
    v = np.sort(np.asarray(x, dtype=np.float64).ravel())[::-1]
    weights = np.array([d**i for i in range(v.size)])  # 0.0 ** 0 == 1.0
    return float(np.sum(weights * v) / np.sum(weights))


def np_psi(F, C1, C2, psi):
    if psi == "L2" or F <= C1 + C2:
        return (max(F / C1, C2 / C1) - C2 / C1) ** 2
    return abs(F - (C1 + C2)) + 1.0


def np_heatmap_loss(H, masks, A=1, B=1, E=1, d=0.9, C1=1, C2=25, psi="hybrid"):
    """Returns (L_H, batch mean of L_bg, batch mean of L_fg)."""
    H = np.asarray(H, dtype=np.float64)
    N, K, C, h, w = H.shape
    totals, bgs, fgs = [], [], []
    for n in range(N):
        M = np_resize_mask(np.asarray(masks[n]).reshape(masks[n].shape[-2:]), h, w)
        bg_terms, low_terms, psi_terms = [], [], []
        for k in range(K):
            absH = np.abs(H[n, k])
            Mc = np.broadcast_to(M, absH.shape)
            Hn = absH / (np.sum(absH * Mc) / np.sum(Mc) + 1e-10)
            for c in range(C):
                g = np_gwrp(Hn[c] * (1 - M), d)
                bg_terms.append(-np.log(1 - min(g / (g + E), 1 - 1e-7)))
            F = np.sum(absH * Mc)
            low_terms.append((min(F / C1, 1) - 1) ** 2)
            psi_terms.append(np_psi(F, C1, C2, psi))
        L_bg = np.mean(bg_terms)
        L_fg = np.mean(low_terms) + np.mean(psi_terms)
        totals.append(A * L_bg + B * L_fg)
        bgs.append(L_bg)
        fgs.append(L_fg)
    return np.mean(totals), np.mean(bgs), np.mean(fgs)


def np_foreground_sums(H, masks):
    N, K, C, h, w = H.shape
    return np.array(
        [[np.sum(np.abs(H[n, k]) * np_resize_mask(masks[n, 0], h, w)) for k in range(K)] for n in range(N)]
    )


# ---------------------------------------------------------------- data


def make_masks(rng, n, H, W):
    """Binary masks N x 1 x H x W: a random rectangle plus a few stray foreground pixels."""
    masks = np.zeros((n, 1, H, W))
    for i in range(n):
        r0, c0 = rng.integers(0, H // 2), rng.integers(0, W // 2)
        r1, c1 = rng.integers(r0 + 1, H + 1), rng.integers(c0 + 1, W + 1)
        masks[i, 0, r0:r1, c0:c1] = 1
        masks[i, 0, rng.integers(0, H, 2), rng.integers(0, W, 2)] = 1
    return masks


def make_heatmaps(rng, n=4, k=2, c=3, h=8, w=8):
    """Random signed heatmaps, one scale per sample so F falls below C1, inside and beyond C1 + C2."""
    scales = np.array([0.002, 0.1, 0.3, 2.0, 0.05, 1.0])[:n]
    return rng.standard_normal((n, k, c, h, w)) * scales[:, None, None, None, None]


def t(a):
    return torch.tensor(a, dtype=torch.float64)


# ---------------------------------------------------------------- mask resizing


@pytest.mark.parametrize("src", [(16, 16), (13, 11), (8, 8), (5, 7)])
def test_resize_mask_matches_numpy(src):
    rng = np.random.default_rng(1)
    masks = make_masks(rng, 3, *src)
    got = resize_mask(t(masks), (8, 8)).numpy()
    want = np.stack([np_resize_mask(m[0], 8, 8)[None] for m in masks])
    assert got.shape == (3, 1, 8, 8)
    np.testing.assert_array_equal(got, want)


def test_resize_mask_any_foreground_becomes_one():
    mask = np.zeros((1, 1, 8, 8))
    mask[0, 0, 5, 2] = 1  # one pixel in the 4x4 block (1, 0)
    got = resize_mask(t(mask), (2, 2)).numpy()[0, 0]
    np.testing.assert_array_equal(got, [[0, 0], [1, 0]])


def test_resize_mask_accepts_n_h_w_and_bool():
    masks = make_masks(np.random.default_rng(2), 2, 12, 12)
    a = resize_mask(t(masks[:, 0]), (4, 6))
    b = resize_mask(torch.tensor(masks > 0), (4, 6))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert a.shape == (2, 1, 4, 6)


@pytest.mark.parametrize("bad", [0.5, 2.0, -1.0, float("nan")])
def test_non_binary_mask_raises(bad):
    mask = np.zeros((2, 1, 8, 8))
    mask[1, 0, 3, 3] = bad
    with pytest.raises(LrpgraphError, match="not binary"):
        resize_mask(t(mask), (4, 4))
    with pytest.raises(LrpgraphError, match="not binary"):
        resize_mask(t(mask), (8, 8))  # same size: still checked
    with pytest.raises(LrpgraphError, match="not binary"):
        heatmap_loss(torch.ones(2, 1, 1, 4, 4), t(mask))


# ---------------------------------------------------------------- GWRP


@pytest.mark.parametrize("d", [0.0, 0.3, 0.9, 0.996, 1.0])
def test_gwrp_matches_numpy(d):
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 7))
    got = gwrp(t(x), d).numpy()
    want = np.array([[np_gwrp(x[i, j], d) for j in range(3)] for i in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_gwrp_d0_is_max_and_d1_is_mean():
    x = np.random.default_rng(4).standard_normal((2, 2, 3, 6, 5))
    np.testing.assert_allclose(gwrp(t(x), 0.0).numpy(), x.max(axis=(-2, -1)), rtol=0, atol=0)
    np.testing.assert_allclose(gwrp(t(x), 1.0).numpy(), x.mean(axis=(-2, -1)), rtol=1e-13)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 6), st.integers(1, 6), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1)
)
def test_gwrp_random_shapes(h, w, d, seed):
    x = np.random.default_rng(seed).standard_normal((2, h, w))
    got = gwrp(t(x), d).numpy()
    want = [np_gwrp(x[i], d) for i in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert np.all(got <= x.max(axis=(1, 2)) + 1e-12) and np.all(got >= x.min(axis=(1, 2)) - 1e-12)


def test_gwrp_rejects_d_outside_unit_interval():
    with pytest.raises(LrpgraphError, match="outside"):
        gwrp(torch.ones(1, 2, 2), 1.5)


# ---------------------------------------------------------------- heatmap loss


@pytest.mark.parametrize("psi", ["L2", "hybrid"])
@pytest.mark.parametrize("d", [0.0, 0.9, 1.0])
@pytest.mark.parametrize("src", [(8, 8), (16, 16), (13, 11)])
def test_heatmap_loss_matches_numpy(psi, d, src):
    rng = np.random.default_rng(5)
    H = make_heatmaps(rng, n=6)
    masks = make_masks(rng, 6, *src)
    got = heatmap_loss(t(H), t(masks), A=1.3, B=0.7, E=1.5, d=d, C1=1, C2=25, psi=psi)
    want = np_heatmap_loss(H, masks, A=1.3, B=0.7, E=1.5, d=d, C1=1, C2=25, psi=psi)
    np.testing.assert_allclose([v.item() for v in got], want, rtol=1e-10)


def test_hybrid_branches_on_both_sides_of_c1_plus_c2():
    rng = np.random.default_rng(6)
    H = make_heatmaps(rng, n=6)
    masks = make_masks(rng, 6, 16, 16)
    C1, C2 = 1.0, 25.0
    F = np_foreground_sums(H, masks)
    assert (F < C1).any() and ((F > C1) & (F <= C1 + C2)).any() and (F > C1 + C2).any()
    hybrid = heatmap_loss(t(H), t(masks), C1=C1, C2=C2, psi="hybrid")
    l2 = heatmap_loss(t(H), t(masks), C1=C1, C2=C2, psi="L2")
    np.testing.assert_allclose(hybrid.foreground.item(), np_heatmap_loss(H, masks, psi="hybrid")[2], rtol=1e-10)
    assert l2.foreground.item() > hybrid.foreground.item()  # L1 beyond C1 + C2 is milder here


def test_hybrid_single_maps_each_side():
    """One map per sample, F set exactly, so each branch is checked in isolation."""
    C1, C2 = 2.0, 10.0
    masks = np.ones((1, 1, 2, 2))
    for F in [0.5, 2.0, 7.0, 12.0, 12.5, 40.0]:
        H = np.full((1, 1, 1, 2, 2), F / 4)
        got = heatmap_loss(t(H), t(masks), C1=C1, C2=C2, psi="hybrid").foreground.item()
        want = (min(F / C1, 1) - 1) ** 2 + np_psi(F, C1, C2, "hybrid")
        assert got == pytest.approx(want, rel=1e-12)
    # continuous at C1 + C2: both forms give 1 there
    assert np_psi(C1 + C2, C1, C2, "hybrid") == pytest.approx(1.0)


def test_float32_close_to_float64_reference():
    rng = np.random.default_rng(7)
    H = make_heatmaps(rng, n=4)
    masks = make_masks(rng, 4, 16, 16)
    got = heatmap_loss(torch.tensor(H, dtype=torch.float32), torch.tensor(masks, dtype=torch.float32))
    np.testing.assert_allclose([v.item() for v in got], np_heatmap_loss(H, masks), rtol=1e-5)


def test_four_dim_heatmaps_are_one_map_per_sample():
    rng = np.random.default_rng(8)
    H = make_heatmaps(rng, n=3, k=1)
    masks = make_masks(rng, 3, 8, 8)
    a = heatmap_loss(t(H[:, 0]), t(masks[:, 0]))
    b = heatmap_loss(t(H), t(masks))
    assert a.total.item() == pytest.approx(b.total.item(), rel=1e-14)
    assert a.total.item() == pytest.approx(np_heatmap_loss(H, masks)[0], rel=1e-10)


def test_empty_mask_gives_a_finite_loss():
    H = np.random.default_rng(9).standard_normal((1, 1, 2, 4, 4))
    loss = heatmap_loss(t(H), torch.zeros(1, 1, 4, 4))
    assert torch.isfinite(loss.total)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"psi": "L1"}, "psi"), ({"C1": 0}, "C1"), ({"E": 0}, "E = 0"), ({"d": -0.1}, "d = -0.1")],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(LrpgraphError, match=match):
        heatmap_loss(torch.ones(1, 1, 1, 2, 2), torch.ones(1, 1, 2, 2), **kwargs)


def test_bad_shapes_raise():
    with pytest.raises(LrpgraphError, match="N x K x C x h x w"):
        heatmap_loss(torch.ones(2, 2, 2), torch.ones(2, 1, 2, 2))
    with pytest.raises(LrpgraphError, match="one mask per sample"):
        heatmap_loss(torch.ones(2, 1, 1, 2, 2), torch.ones(3, 1, 2, 2))


@pytest.mark.parametrize("psi, C1, C2", [("hybrid", 1.0, 25.0), ("L2", 1.0, 25.0), ("hybrid", 0.5, 3.0)])
def test_gradcheck(psi, C1, C2):
    rng = np.random.default_rng(10)
    H = make_heatmaps(rng, n=4, k=2, c=2, h=4, w=4)
    masks = make_masks(rng, 4, 8, 8)
    F = np_foreground_sums(H, masks)
    assert np.min(np.abs(F - C1)) > 1e-3 and np.min(np.abs(F - (C1 + C2))) > 1e-3  # off the kinks
    H = t(H).requires_grad_(True)
    m = t(masks)

    def f(x):
        return heatmap_loss(x, m, A=1.0, B=1.0, E=1.0, d=0.9, C1=C1, C2=C2, psi=psi).total

    assert torch.autograd.gradcheck(f, (H,), eps=1e-6, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------- total loss


def np_cross_entropy(logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -np.mean(logp[np.arange(len(labels)), labels])


def test_isnet_loss_total():
    rng = np.random.default_rng(11)
    H = make_heatmaps(rng, n=4)
    masks = make_masks(rng, 4, 16, 16)
    logits = rng.standard_normal((4, 5))
    labels = np.array([0, 3, 4, 1])
    module = ISNetLoss(P=0.7, A=1.0, B=2.0, E=1.0, d=0.9, C1=1.0, C2=25.0, psi="hybrid")
    out = module(t(logits), torch.tensor(labels), t(H), t(masks))
    ce = np_cross_entropy(logits, labels)
    lh, bg, fg = np_heatmap_loss(H, masks, A=1.0, B=2.0)
    assert out.total.item() == pytest.approx(0.3 * ce + 0.7 * lh, rel=1e-10)
    assert out.cross_entropy.item() == pytest.approx(ce, rel=1e-10)
    assert out.heatmap.item() == pytest.approx(lh, rel=1e-10)
    assert (out.background.item(), out.foreground.item()) == pytest.approx((bg, fg), rel=1e-10)


def test_isnet_loss_rejects_p_outside_unit_interval():
    with pytest.raises(LrpgraphError, match="P = 1.5"):
        ISNetLoss(P=1.5)


# ---------------------------------------------------------------- C1/C2 tuner


def test_tuner_matches_numpy_mean_and_std():
    rng = np.random.default_rng(12)
    batches = [rng.gamma(2.0, 3.0, size) for size in (1, 7, 32, 3, 64)]
    tuner = C1C2Tuner()
    for i, b in enumerate(batches):
        tuner.update(torch.tensor(b).reshape(-1, 1) if i % 2 else list(b))
    allv = np.concatenate(batches)
    assert tuner.count == allv.size
    assert tuner.mean == pytest.approx(np.mean(allv), rel=1e-12)
    assert tuner.std == pytest.approx(np.std(allv), rel=1e-10)


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(13).normal(10.0, 0.5, 200),  # C1 = mu - 3 sigma, C2 = mu + 3 sigma
        np.array([0.01] * 99 + [100.0]),  # C1 = mu / 5, C2 = 25 C1
    ],
)
def test_tuner_result_formula(values):
    tuner = C1C2Tuner()
    tuner.update(values[:50])
    tuner.update(values[50:])
    mu, sigma = np.mean(values), np.std(values)
    c1 = max(mu / 5, mu - 3 * sigma)
    c2 = min(25 * c1, mu + 3 * sigma)
    assert tuner.result() == pytest.approx((c1, c2), rel=1e-10)


def test_tuner_branches_are_both_exercised():
    mu, s = 10.0, 0.5
    assert mu - 3 * s > mu / 5 and mu + 3 * s < 25 * (mu - 3 * s)
    v = np.array([0.01] * 99 + [100.0])
    mu, s = v.mean(), v.std()
    assert mu / 5 > mu - 3 * s and 25 * mu / 5 < mu + 3 * s


def test_tuner_without_values_raises():
    with pytest.raises(LrpgraphError, match="no values"):
        C1C2Tuner().result()


def test_total_relevance_matches_numpy():
    H = np.random.default_rng(14).standard_normal((3, 2, 2, 4, 4))
    np.testing.assert_allclose(total_relevance(t(H)).numpy(), np.abs(H).sum(axis=(2, 3, 4)))

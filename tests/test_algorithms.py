"""Mixing algorithms: ADO against a reference computation of its update rule, LossAverage."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mixsql.algorithms import ADO, ALGORITHMS, LossAverage, fit_power_law, make_algorithm, savgol
from mixsql.errors import ProgrammingError

CFG = dict(update_every=100, fit_skip=20, subsample=2, smooth_window=11, fit_lag=5)


def curves(steps: int, seed: int = 0):
    """Group 'fast': loss falls steeply; group 'slow': nearly flat. Small seeded noise."""
    rng = np.random.Generator(np.random.PCG64(seed))
    for s in range(steps):
        n = s + 1
        fast = 2.0 + 6.0 * n ** -0.6
        slow = 2.5 + 0.4 * n ** -0.05
        noise = rng.normal(0, 0.002, 2)
        tokens = np.array([1000.0, 1000.0])
        yield s, ((np.array([fast, slow]) + noise) * tokens).tolist(), tokens.tolist()


def reference_ado(feedback, prior, cfg):
    """Plain re-statement of reference/ado.md in scalar loops (smoothing: ``savgol``, checked
    against scipy separately; the fit: ``fit_power_law``, checked for parameter recovery)."""
    g1, g2, s_exp, dmin = 0.1, 0.1, 0.5, 0.01
    k = len(prior)
    hist, out = [], []
    params = None
    pending = None
    pi, h, pibar, t = list(prior), list(prior), list(prior), 0
    for step, ls, tc in feedback:
        hist.append([l / c for l, c in zip(ls, tc)])
        rows = len(hist)
        if pending and rows >= pending[1]:
            params, pending = pending[0], None
        if rows % cfg["update_every"] == 0:
            fits = []
            for g in range(k):
                y = savgol(np.array([r[g] for r in hist]), cfg["smooth_window"], 3)
                n = np.arange(1, rows + 1, dtype=float)
                n, y = n[cfg["fit_skip"]:][::cfg["subsample"]], y[cfg["fit_skip"]:][::cfg["subsample"]]
                fits.append(fit_power_law(n, y))
            pending = (fits, rows + cfg["fit_lag"])
        if params is None:
            out.append(None)
            continue
        n = float(rows)
        grad = [-a * (b * n ** -a) / n for a, b, e in params]
        h = [g1 * pi[i] + (1 - g1) * h[i] for i in range(k)]
        lam = [x ** s_exp for x in h]
        rho = [max(0.0, prior[i] * lam[i] * -grad[i]) for i in range(k)]
        tot = sum(rho)
        rho = [r / tot for r in rho] if tot > 0 else list(prior)
        new = [g2 * rho[i] + (1 - g2) * pibar[i] for i in range(k)]
        new = [x / sum(new) for x in new]
        new = [max(x, dmin) for x in new]
        new = [x / sum(new) for x in new]
        pibar = [rho[i] / (t + 1) + (1 - 1 / (t + 1)) * pibar[i] for i in range(k)]
        pi, t = new, t + 1
        out.append(list(pi))
    return out


def test_registry():
    assert ALGORITHMS == {"ado": ADO, "loss_average": LossAverage}
    with pytest.raises(ProgrammingError, match="unknown mixing algorithm"):
        make_algorithm("doremi", ["a"], [1.0])
    with pytest.raises(ProgrammingError, match="unknown argument"):
        make_algorithm("ado", ["a", "b"], [1, 1], {"update_evry": 3})
    with pytest.raises(ProgrammingError, match="one per group"):
        LossAverage(["a", "b"], [1, 1]).update(0, [1.0], [1.0])


def test_loss_average_mixtera_scenario_5():
    algo = LossAverage(["a", "b"], [0.5, 0.5])
    w = algo.update(0, [2.0, 1.0], [1, 1])
    assert [round(x * 12) for x in w] == [8, 4]
    w = algo.update(1, [0.0, 3.0], [1, 1])      # cumulative losses (2, 4)
    assert [round(x * 12) for x in w] == [4, 8]
    clone = LossAverage(["a", "b"], [0.5, 0.5])
    clone.load_state_dict(algo.state_dict())
    assert clone.update(2, [1, 1], [1, 1]) == algo.update(2, [1, 1], [1, 1])


def test_savgol_matches_scipy():
    from scipy import signal
    y = np.random.Generator(np.random.PCG64(1)).normal(size=700).cumsum()
    for window, order in ((101, 3), (11, 3), (7, 2)):
        assert np.allclose(savgol(y, window, order), signal.savgol_filter(y, window, order), atol=1e-9)


def test_power_law_fit_recovers_parameters():
    n = np.arange(500, 20000, 10, dtype=float)
    loss = 2.2 + 40.0 * n ** -0.45
    alpha, beta, eps = fit_power_law(n, loss)
    assert alpha == pytest.approx(0.45, abs=0.01)
    assert eps == pytest.approx(2.2, rel=0.01)
    pred = eps + beta * n ** -alpha
    assert np.max(np.abs(pred - loss)) < 1e-3


def test_ado_matches_reference_computation():
    fb = list(curves(320))
    algo = ADO(["fast", "slow"], [0.5, 0.5], **CFG)
    got = [algo.update(*x) for x in fb]
    algo.close()
    ref = reference_ado(fb, [0.5, 0.5], CFG)
    assert [g is None for g in got] == [r is None for r in ref]
    assert got[103] is None and got[104] is not None          # fit of calls 1..100 applied at call 105
    for g, r in zip(got, ref):
        if g is not None:
            assert g == pytest.approx(r, abs=1e-12)


def test_ado_fastest_falling_group_gains_weight():
    algo = ADO(["fast", "slow"], [0.5, 0.5], **CFG)
    weights = [w for w in (algo.update(*x) for x in curves(320)) if w is not None]
    algo.close()
    assert weights[-1][0] > 0.6 > weights[-1][1] >= 0.01
    assert weights[-1][0] > weights[0][0]


def test_ado_deterministic_and_resumable_with_pending_fit():
    fb = list(curves(260, seed=3))
    a = ADO(["fast", "slow"], [0.3, 0.7], **CFG)
    full = [a.update(*x) for x in fb]
    b = ADO(["fast", "slow"], [0.3, 0.7], **CFG)
    part = [b.update(*x) for x in fb[:202]]                 # a refit is pending (launched at 200)
    state = b.state_dict()
    assert state["pending"] == {"rows": 200, "apply_at": 205}
    b.close()
    import json
    c = ADO(["fast", "slow"], [0.3, 0.7], **CFG)
    c.load_state_dict(json.loads(json.dumps(state)))
    rest = [c.update(*x) for x in fb[202:]]
    assert part + rest == full
    for x in (a, c):
        x.close()


def test_ado_min_probability_and_prior_before_fit():
    algo = ADO(["a", "b", "c"], [0.2, 0.3, 0.5], update_every=50, fit_skip=0, subsample=1, smooth_window=5,
               fit_lag=0, delta_min=0.05)
    out = []
    for s in range(120):
        n = s + 1
        losses = [3 + 5 * n ** -0.7, 3.0, 3.0]                 # only group a improves
        out.append(algo.update(s, [x * 10 for x in losses], [10, 10, 10]))
    assert all(w is None for w in out[:49]) and out[49] is not None   # fit_lag=0: applied at once
    assert min(out[-1]) >= 0.05 / (1 + 3 * 0.05) - 1e-12 and math.isclose(sum(out[-1]), 1.0)
    assert out[-1][0] == max(out[-1])

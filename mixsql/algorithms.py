"""Feedback-driven mixing algorithms (``MIX BY ... USING name (args)``).

Interface (a new algorithm is one class registered in :data:`ALGORITHMS`)::

    class MyAlgo(MixingAlgorithm):
        def __init__(self, groups, prior_weights, **args): ...
        def update(self, step, loss_sums, token_counts) -> list[float] | None: ...
        def state_dict(self) -> dict: ...          # JSON-able
        def load_state_dict(self, state) -> None: ...
        append_only = ("history",)                 # optional, see below

``groups`` are the leaf group paths (``spec.groups[i].path``), ``prior_weights`` the starting
weights (normalised; ``prior = NATURAL`` is resolved by the planner). ``update`` is called once
per reported training step with per-group sums of token losses and token counts (already
all-reduced across data-parallel ranks); it returns new weights (any non-negative numbers,
normalised by the caller) or ``None`` to keep the current ones. An algorithm must be a
deterministic function of the feedback sequence: the server records at which chunk each new
weight vector takes effect, and a restored job must reproduce the same weights.

``append_only`` names ``state_dict()`` keys whose lists only grow by appending between
``load_state_dict`` calls (ADO's per-step loss history). The server journals those
incrementally (``mixsql.jobs``) instead of rewriting them on every feedback call, so a
feedback call costs the same at step 100,000 as at step 10.
"""
from __future__ import annotations

import math
import threading
from typing import Any, Sequence

import numpy as np

from .errors import ProgrammingError

try:  # optional: scipy gives the exact L-BFGS-B fit; a numpy fallback is used otherwise
    from scipy.optimize import minimize as _scipy_minimize
except Exception:  # pragma: no cover - depends on the environment
    _scipy_minimize = None


_BLAS_PINNED = threading.local()


def _single_thread_blas() -> None:
    """L-BFGS-B on 3 parameters is ~20x slower with a multi-threaded OpenBLAS (thread spin-up
    per tiny call); pin scipy's bundled OpenBLAS to one thread for the calling thread."""
    if _scipy_minimize is None or getattr(_BLAS_PINNED, "done", False):
        return
    _BLAS_PINNED.done = True
    try:
        import ctypes
        import glob
        import os

        import scipy

        for lib in glob.glob(os.path.join(os.path.dirname(scipy.__file__) + ".libs", "libscipy_openblas*.so")):
            ctypes.CDLL(lib).openblas_set_num_threads_local(1)
    except Exception:  # best effort: only speed depends on it
        pass


def _normalise(w: Sequence[float]) -> list[float]:
    a = np.asarray(w, dtype=np.float64)
    s = float(a.sum())
    if not np.all(np.isfinite(a)) or s <= 0:
        raise ProgrammingError(f"weights must be finite and sum to > 0, got {list(w)}")
    return (a / s).tolist()


class MixingAlgorithm:
    """Base class. Subclasses override ``update`` and, if they keep state, the state methods."""

    name = "base"

    def __init__(self, groups: Sequence[str], prior_weights: Sequence[float], **args: Any):
        if args:
            raise ProgrammingError(
                f"{self.name}: unknown argument(s) {', '.join(sorted(args))}"
            )
        self.groups = list(groups)
        self.prior = _normalise(prior_weights)
        if len(self.prior) != len(self.groups):
            raise ProgrammingError(f"{self.name}: {len(self.groups)} groups but {len(self.prior)} prior weights")

    def _check(self, loss_sums: Sequence[float], token_counts: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        ls = np.asarray(loss_sums, dtype=np.float64)
        tc = np.asarray(token_counts, dtype=np.float64)
        k = len(self.groups)
        if ls.shape != (k,) or tc.shape != (k,):
            raise ProgrammingError(
                f"feedback needs {k} loss sums and {k} token counts (one per group: "
                f"{', '.join(self.groups)}), got {ls.size} and {tc.size}"
            )
        if not (np.all(np.isfinite(ls)) and np.all(np.isfinite(tc))) or np.any(tc < 0):
            raise ProgrammingError("feedback loss sums must be finite and token counts non-negative")
        return ls, tc

    def update(self, step: int, loss_sums: Sequence[float], token_counts: Sequence[float]) -> list[float] | None:
        raise NotImplementedError

    append_only: tuple[str, ...] = ()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def close(self) -> None:
        """Release background resources (threads)."""


class LossAverage(MixingAlgorithm):
    """Weights proportional to each group's mean loss so far (cumulative loss sum / tokens).

    Groups with no tokens yet keep their prior weight's share of the probability mass.
    Mixtera scenario 5: 50:50, losses (2, 1) -> 2:1; cumulative (2, 4) -> 1:2.
    """

    name = "loss_average"

    def __init__(self, groups, prior_weights, **args):
        super().__init__(groups, prior_weights, **args)
        k = len(self.groups)
        self.loss = [0.0] * k
        self.tokens = [0.0] * k

    def update(self, step, loss_sums, token_counts):
        ls, tc = self._check(loss_sums, token_counts)
        self.loss = (np.asarray(self.loss) + ls).tolist()
        self.tokens = (np.asarray(self.tokens) + tc).tolist()
        tok = np.asarray(self.tokens)
        seen = tok > 0
        if not seen.any():
            return None
        mean = np.zeros(len(tok))
        mean[seen] = np.asarray(self.loss)[seen] / tok[seen]
        if mean[seen].sum() <= 0:
            return None
        prior = np.asarray(self.prior)
        seen_mass = prior[seen].sum()
        w = prior.copy()
        w[seen] = mean[seen] / mean[seen].sum() * seen_mass
        return _normalise(w)

    def state_dict(self):
        return {"loss": list(self.loss), "tokens": list(self.tokens)}

    def load_state_dict(self, state):
        self.loss = [float(x) for x in state["loss"]]
        self.tokens = [float(x) for x in state["tokens"]]


# ----------------------------------------------------------------------------- ADO helpers

def savgol(y: np.ndarray, window: int, order: int) -> np.ndarray:
    """Savitzky-Golay smoothing, same result as ``scipy.signal.savgol_filter(mode='interp')``.

    Interior points use the least-squares convolution coefficients; the first and last
    ``window // 2`` points are evaluated on a polynomial fitted to the first/last window.
    Series shorter than the window are smoothed with the largest odd window that fits
    (or returned unchanged when that is not more than ``order``).
    """
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if window > n:
        window = n if n % 2 else n - 1
    if window <= order:
        return y.copy()
    half = window // 2
    x = np.arange(-half, half + 1, dtype=np.float64)
    vander = np.vander(x, order + 1, increasing=True)
    coeffs = np.linalg.pinv(vander)[0]          # value at the centre
    out = np.empty(n)
    out[half:n - half] = np.convolve(y, coeffs[::-1], mode="valid")
    t = np.arange(window, dtype=np.float64)
    for seg, idx in ((y[:window], slice(0, half)), (y[-window:], slice(n - half, n))):
        p = np.polynomial.polynomial.polyfit(t, seg, order)
        pos = t[:half] if idx.start == 0 else t[window - half:]
        out[idx] = np.polynomial.polynomial.polyval(pos, p)
    return out


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    a = np.abs(r)
    quad = a <= delta
    val = np.where(quad, 0.5 * r * r, delta * (a - 0.5 * delta))
    grad = np.where(quad, r, delta * np.sign(r))
    return val, grad


def _objective(theta: np.ndarray, logn: np.ndarray, logy: np.ndarray, delta: float):
    """Huber loss of log L ~ logsumexp(log beta - alpha log n, log eps) and its gradient."""
    alpha, logb, loge = theta
    a = logb - alpha * logn
    m = np.maximum(a, loge)
    ea, ee = np.exp(a - m), np.exp(loge - m)
    pred = m + np.log(ea + ee)
    wa = ea / (ea + ee)
    val, g = _huber(pred - logy, delta)
    grad = np.array([np.sum(g * wa * -logn), np.sum(g * wa), np.sum(g * (1 - wa))])
    return float(val.sum()), grad


def fit_power_law(n: np.ndarray, loss: np.ndarray, *, delta: float = 1e-3,
                  alpha_max: float = 0.8, logb_max: float = 6.5, loge_min: float = 0.5,
                  starts: int = 4) -> tuple[float, float, float]:
    """Fit L(n) = eps + beta * n**-alpha in log space; returns (alpha, beta, eps).

    A grid of 8 alpha x 8 log-beta x 6 log-eps starts is scored vectorised; L-BFGS-B (scipy)
    runs from the ``starts`` best grid points within the bounds alpha in [0, alpha_max],
    log beta <= logb_max, log eps >= loge_min. Without scipy a projected gradient descent
    with backtracking refines the same starts.
    """
    _single_thread_blas()
    n = np.asarray(n, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    ok = (n > 0) & (loss > 0) & np.isfinite(loss)
    logn, logy = np.log(n[ok]), np.log(loss[ok])
    if len(logn) < 3:
        raise ValueError("need at least 3 points to fit a power law")
    ymax = float(logy.max())
    ga = np.linspace(0.0, alpha_max, 8)
    gb = np.linspace(-2.0, logb_max, 8)
    ge = np.linspace(loge_min, max(loge_min, ymax), 6)
    A, B, E = np.meshgrid(ga, gb, ge, indexing="ij")
    A, B, E = A.ravel(), B.ravel(), E.ravel()
    pred = np.logaddexp(B[:, None] - A[:, None] * logn[None, :], E[:, None])
    grid_val = _huber(pred - logy[None, :], delta)[0].sum(axis=1)
    order = np.argsort(grid_val, kind="stable")[:starts]
    bounds = [(0.0, alpha_max), (-30.0, logb_max), (loge_min, max(loge_min, ymax) + 5.0)]
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])
    best, best_val = None, math.inf
    for i in order:
        x0 = np.array([A[i], B[i], E[i]])
        if _scipy_minimize is not None:
            res = _scipy_minimize(_objective, x0, args=(logn, logy, delta), jac=True,
                                  method="L-BFGS-B", bounds=bounds)
            x, v = np.clip(res.x, lo, hi), float(res.fun)
        else:  # pragma: no cover - exercised only without scipy
            x, v = _pgd(x0, logn, logy, delta, lo, hi)
        if v < best_val - 1e-15:
            best, best_val = x, v
    alpha, logb, loge = (float(t) for t in best)
    return alpha, math.exp(logb), math.exp(loge)


def _pgd(x, logn, logy, delta, lo, hi, iters=300):  # pragma: no cover - fallback
    v, g = _objective(x, logn, logy, delta)
    step = 1.0
    for _ in range(iters):
        while step > 1e-12:
            xn = np.clip(x - step * g, lo, hi)
            vn, gn = _objective(xn, logn, logy, delta)
            if vn < v:
                x, v, g = xn, vn, gn
                step *= 2
                break
            step /= 2
        else:
            break
    return x, v


def ado_fit_all(history: list[list[float | None]], *, skip: int, every: int, window: int,
                order: int, fit_kwargs: dict) -> list[list[float] | None]:
    """Fit every group's power law from the per-step mean-loss history (rows: steps).

    Per group: forward-fill missing steps, Savitzky-Golay smooth, drop the first ``skip``
    steps, keep every ``every``-th, fit against n = step + 1. Returns [alpha, beta, eps] or
    None per group (too few points).
    """
    k = len(history[0]) if history else 0
    out: list[list[float] | None] = []
    for g in range(k):
        col = [row[g] for row in history]
        first = next((i for i, v in enumerate(col) if v is not None), None)
        if first is None:
            out.append(None)
            continue
        y = np.empty(len(col))
        last = col[first]
        for i, v in enumerate(col):
            last = v if v is not None else last
            y[i] = last
        y = savgol(y[first:], window, order)
        n = np.arange(first + 1, len(col) + 1, dtype=np.float64)
        keep = np.arange(len(y)) >= max(skip - first, 0)
        n, y = n[keep][::every], y[keep][::every]
        try:
            out.append(list(fit_power_law(n, y, **fit_kwargs)))
        except ValueError:
            out.append(None)
    return out


class ADO(MixingAlgorithm):
    """Adaptive Data Optimization (Jiang et al., ICLR 2025), per ``reference/ado.md``.

    Arguments (``USING ADO (name = value, ...)``): ``update_every`` (1000: refit period and
    first refit step), ``fit_skip`` (500: first steps dropped from the fit), ``subsample``
    (10), ``smooth_window`` (101), ``smooth_order`` (3), ``gamma1`` (0.1), ``gamma2`` (0.1),
    ``s`` (0.5), ``delta_min`` (0.01), ``huber_delta`` (1e-3), ``fit_lag`` (10), ``prior``
    (resolved by the planner into the prior weights; ignored here).

    n, the samples seen, advances by the whole batch every step (ADO's use_same_step_size),
    so n = step count; a constant batch size only rescales beta.

    Steps are counted in feedback calls (row i of the history is the i-th call); send
    feedback every training step for the paper's schedule.

    Determinism: at every step s with s % update_every == 0 (s >= update_every) a refit of
    the history up to and including s starts on a background thread, so ``update`` returns
    in milliseconds. Its result is applied exactly at step s + fit_lag (the call waits for
    the fit only if it is still running then). Weights are therefore a pure function of the
    feedback sequence. Before the first fit is applied the policy is the prior mu (returns
    None); afterwards every step runs the policy update and returns the new weights.
    """

    name = "ado"
    DEFAULTS = dict(update_every=1000, fit_skip=500, subsample=10, smooth_window=101, smooth_order=3,
                    gamma1=0.1, gamma2=0.1, s=0.5, delta_min=0.01, huber_delta=1e-3, fit_lag=10,
                    alpha_max=0.8, logb_max=6.5, loge_min=0.5)

    def __init__(self, groups, prior_weights, **args):
        args.pop("prior", None)
        unknown = set(args) - set(self.DEFAULTS)
        super().__init__(groups, prior_weights, **{k: args[k] for k in unknown})
        self.cfg = {**self.DEFAULTS, **args}
        for key in ("update_every", "fit_skip", "subsample", "smooth_window", "smooth_order", "fit_lag"):
            v = self.cfg[key]
            if not isinstance(v, (int, float)) or int(v) != v or v < (0 if key in ("fit_skip", "fit_lag") else 1):
                raise ProgrammingError(f"ado: {key} must be a positive integer, got {v!r}")
            self.cfg[key] = int(v)
        if not 0 <= float(self.cfg["delta_min"]) * len(self.groups) <= 1:
            raise ProgrammingError(f"ado: delta_min * groups must be <= 1, got {self.cfg['delta_min']}")
        k = len(self.groups)
        self.history: list[list[float | None]] = []   # per step: mean loss per group (None: no tokens)
        self.steps: list[int] = []                      # reported step of each history row
        self.params: list[list[float] | None] | None = None  # fitted [alpha, beta, eps] per group
        self.pi = list(self.prior)
        self.h = list(self.prior)
        self.pibar = list(self.prior)
        self.t = 0
        self.pending: dict | None = None               # {"rows": int, "apply_at": step}
        self._thread: threading.Thread | None = None
        self._result: list | None = None
        self._error: BaseException | None = None
        self._k = k

    # -- fitting ------------------------------------------------------------------------
    def _fit_kwargs(self) -> dict:
        c = self.cfg
        return dict(delta=float(c["huber_delta"]), alpha_max=float(c["alpha_max"]),
                    logb_max=float(c["logb_max"]), loge_min=float(c["loge_min"]))

    def fit(self, rows: int) -> list[list[float] | None]:
        """Synchronous fit of the first ``rows`` history rows (what the background thread runs)."""
        c = self.cfg
        return ado_fit_all(self.history[:rows], skip=c["fit_skip"], every=c["subsample"],
                           window=c["smooth_window"], order=c["smooth_order"], fit_kwargs=self._fit_kwargs())

    def _launch(self, rows: int, apply_at: int) -> None:
        self.pending = {"rows": rows, "apply_at": apply_at}
        snapshot = [list(r) for r in self.history[:rows]]
        self._result, self._error = None, None

        def work():
            try:
                c = self.cfg
                self._result = ado_fit_all(snapshot, skip=c["fit_skip"], every=c["subsample"],
                                           window=c["smooth_window"], order=c["smooth_order"],
                                           fit_kwargs=self._fit_kwargs())
            except BaseException as exc:  # surfaced when the result is applied
                self._error = exc

        self._thread = threading.Thread(target=work, name="mixsql-ado-fit", daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(f"ado: power-law refit failed: {err}") from err
        new = self._result
        # a group whose fit failed keeps its previous parameters
        old = self.params or [None] * self._k
        self.params = [n if n is not None else o for n, o in zip(new, old)]
        self.pending = None

    # -- policy ---------------------------------------------------------------------------
    def policy_step(self, n: float) -> list[float]:
        """One ADO policy update at samples-seen ``n`` (steps 1-5 of reference/ado.md)."""
        c = self.cfg
        mu = np.asarray(self.prior)
        slope = np.zeros(self._k)
        for g, p in enumerate(self.params or []):
            if p is not None:
                alpha, beta, eps = p
                lk = eps + beta * n ** (-alpha)
                slope[g] = -alpha * (lk - eps) / n
        h = c["gamma1"] * np.asarray(self.pi) + (1 - c["gamma1"]) * np.asarray(self.h)
        lam = h ** c["s"]
        rho = np.clip(mu * lam * (-slope), 0.0, None)
        rho = rho / rho.sum() if rho.sum() > 0 else mu.copy()
        pi = c["gamma2"] * rho + (1 - c["gamma2"]) * np.asarray(self.pibar)
        pi = pi / pi.sum()
        pi = np.maximum(pi, c["delta_min"])
        pi = pi / pi.sum()
        t = self.t
        self.pibar = (rho / (t + 1) + (1 - 1 / (t + 1)) * np.asarray(self.pibar)).tolist()
        self.h, self.pi, self.t = h.tolist(), pi.tolist(), t + 1
        return list(self.pi)

    def update(self, step, loss_sums, token_counts):
        ls, tc = self._check(loss_sums, token_counts)
        self.history.append([float(l / t) if t > 0 else None for l, t in zip(ls, tc)])
        self.steps.append(int(step))
        rows = len(self.history)
        c = self.cfg
        if self.pending is not None and rows >= self.pending["apply_at"]:
            self._collect()
        if rows % c["update_every"] == 0:
            if self.pending is not None:  # fit_lag >= update_every: apply the older fit first
                self._collect()
            if c["fit_lag"] == 0:  # synchronous refit (reference behaviour, slower calls)
                self.pending = {"rows": rows, "apply_at": rows}
                self._result, self._error = self.fit(rows), None
                self._collect()
            else:
                self._launch(rows, rows + c["fit_lag"])
        if self.params is None:
            return None
        return self.policy_step(float(rows))

    # -- state ----------------------------------------------------------------------------
    append_only = ("history", "steps")

    def state_dict(self):
        return {"history": self.history, "steps": self.steps, "params": self.params,
                "pi": self.pi, "h": self.h, "pibar": self.pibar, "t": self.t, "pending": self.pending}

    def load_state_dict(self, state):
        self.close()
        self.history = [list(r) for r in state["history"]]
        self.steps = [int(s) for s in state["steps"]]
        self.params = state["params"]
        self.pi, self.h, self.pibar = list(state["pi"]), list(state["h"]), list(state["pibar"])
        self.t = int(state["t"])
        self.pending = None
        if state.get("pending"):
            self._launch(int(state["pending"]["rows"]), int(state["pending"]["apply_at"]))

    def close(self):
        if self._thread is not None:
            self._thread.join()
            self._thread = None


ALGORITHMS: dict[str, type[MixingAlgorithm]] = {"ado": ADO, "loss_average": LossAverage}


def make_algorithm(name: str, groups: Sequence[str], prior_weights: Sequence[float],
                   args: dict | None = None) -> MixingAlgorithm:
    """Instantiate ``ALGORITHMS[name]`` with clear errors for unknown names or arguments."""
    cls = ALGORITHMS.get(name.lower())
    if cls is None:
        raise ProgrammingError(f"unknown mixing algorithm {name!r}; known: {', '.join(sorted(ALGORITHMS))}")
    return cls(groups, prior_weights, **(args or {}))

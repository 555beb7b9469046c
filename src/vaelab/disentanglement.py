"""Disentanglement metrics of a representation against the ground-truth factors of its data.

Plain functions of `codes` (N, D), float (posterior means, numpy or torch), and `factors`
(N, K), integer-coded (e.g. dSprites' `latents_classes`), one row per image. Each returns a
float in [0, 1] (DCI a dict of three) and draws its random numbers from `seed` alone. The
protocols follow google-research/disentanglement_lib (Locatello et al. 2019), with its
default sample sizes; where ours differ, the docstring says so. Rows are drawn from the
given data without replacement (disentanglement_lib samples fresh factors instead).
"""

import numpy as np
import torch
from scipy.stats import entropy
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import mutual_info_score
from sklearn.svm import LinearSVC

from vaelab.errors import InputError

Array = np.ndarray | torch.Tensor


def mig(
    codes: Array, factors: Array, *, num_bins: int = 20, num_samples: int = 10_000, seed: int = 0
) -> float:
    """Mutual Information Gap (Chen et al. 2018).

    Each code dimension is discretised into `num_bins` equal-width bins over its range; for
    each factor, the mutual information of the best code minus that of the second best,
    over the factor's entropy; the mean over factors.

    Args:
        codes: (N, D) posterior means, D >= 2.
        factors: (N, K) integer-coded factors.
        num_bins: histogram bins per code dimension.
        num_samples: rows drawn (all rows if fewer).
        seed: draws the rows.
    """
    codes, factors = _arrays(codes, factors, "mig", min_dims=2)
    num_samples, num_bins = _positive("num_samples", num_samples), _positive("num_bins", num_bins)
    rows = np.random.default_rng(seed).permutation(len(codes))[:num_samples]
    codes, factors = codes[rows], _varying(factors[rows], "mig")
    info = _information(codes, factors, num_bins)
    best = np.sort(info, axis=0)[::-1]  # (D, K) nats, each factor's column from the best code
    entropies = np.array([entropy(np.bincount(factor)) for factor in factors.T])
    return _unit(np.mean((best[0] - best[1]) / entropies))


def _information(codes: np.ndarray, factors: np.ndarray, num_bins: int) -> np.ndarray:
    """(D, K) mutual information in nats of each code, in `num_bins` equal-width bins over
    its range, with each factor."""
    binned = [np.digitize(code, np.histogram_bin_edges(code, num_bins)[:-1]) for code in codes.T]
    return np.array([[mutual_info_score(factor, code) for factor in factors.T] for code in binned])


def captured_factors(
    codes: Array, factors: Array, *, num_bins: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """What each code dimension captures: for each of the D codes, the factor it shares
    the most information with and that information over the factor's entropy (MIG's
    normalised mutual information, in [0, 1]); factors that take one value count 0.

    Returns:
        (D,) factor indices and (D,) shares.
    """
    codes, factors = _arrays(codes, factors, "captured_factors", varying=False)
    entropies = np.array([entropy(np.bincount(factor)) for factor in factors.T])
    info = _information(codes, factors, _positive("num_bins", num_bins))
    share = np.divide(info, entropies, out=np.zeros_like(info), where=entropies > 0)
    return share.argmax(axis=1), share.max(axis=1)


def dci(
    codes: Array, factors: Array, *, num_train: int = 10_000, num_test: int = 5_000, seed: int = 0
) -> dict[str, float]:
    """Disentanglement, completeness and informativeness (Eastwood & Williams 2018).

    One classifier per factor predicts it from all the codes; its feature importances form
    a column of the (D, K) importance matrix. Disentanglement: 1 − the entropy (base K) of
    each code's importances over the factors, averaged with weights the codes' shares of
    the total importance. Completeness: 1 − the entropy (base D) of each factor's
    importances over the codes, averaged likewise. Informativeness: the classifiers' mean
    accuracy on held-out rows (chance is the most frequent value's share).

    The classifiers are random forests of 10 trees that consider every code at each split,
    with leaves of at least 0.2% of the training rows (20 of 10,000). disentanglement_lib
    uses sklearn's gradient boosting, 100 rounds of one tree per class: with only 10
    rounds it took 30 s on 6,666 rows of 10 codes and 5 factors of 3 to 40 values (2 CPU
    cores), these forests 2 s, with the importance as concentrated on the informative
    codes. Fully grown forests that try a few codes per split put some importance on noise
    codes. Eastwood & Williams used random forests too.

    Args:
        codes: (N, D) posterior means.
        factors: (N, K) integer-coded factors.
        num_train: rows that fit the classifiers.
        num_test: held-out rows that score them. With fewer than num_train + num_test rows,
            all rows, split in that ratio.
        seed: draws the rows and seeds the forests.

    Returns:
        {"disentanglement", "completeness", "informativeness"}: floats in [0, 1].
    """
    codes, factors = _arrays(codes, factors, "dci")
    train, test = _split(len(codes), num_train, num_test, seed)
    importance = np.zeros((codes.shape[1], factors.shape[1]))
    accuracy = []
    for k, factor in enumerate(factors.T):
        forest = RandomForestClassifier(
            n_estimators=10, max_features=None, min_samples_leaf=0.002, random_state=seed
        ).fit(codes[train], factor[train])
        importance[:, k] = forest.feature_importances_  # zeros when no split helps
        accuracy.append(forest.score(codes[test], factor[test]))
    return {
        "disentanglement": _certainty(importance),
        "completeness": _certainty(importance.T),
        "informativeness": _unit(np.mean(accuracy)),
    }


def sap(
    codes: Array, factors: Array, *, num_train: int = 10_000, num_test: int = 5_000, seed: int = 0
) -> float:
    """Separated Attribute Predictability (Kumar et al. 2018).

    For each factor and each code dimension, the held-out accuracy of a linear SVM that
    predicts the factor from that one code (disentanglement_lib's LinearSVC, C = 0.01,
    balanced class weights); the mean over factors of the gap between the best two codes.
    Each code is standardised on the training rows first, so that the score does not
    depend on a code's scale (disentanglement_lib feeds the raw code to the strongly
    regularised SVM).

    Args:
        codes: (N, D) posterior means, D >= 2.
        factors: (N, K) integer-coded factors.
        num_train: rows that fit the SVMs.
        num_test: held-out rows that score them. With fewer than num_train + num_test rows,
            all rows, split in that ratio. A factor whose training rows hold one value has
            a gap of 0 (every code predicts that value).
        seed: draws the rows.
    """
    codes, factors = _arrays(codes, factors, "sap", min_dims=2)
    train, test = _split(len(codes), num_train, num_test, seed)
    spread = codes[train].std(axis=0)
    codes = (codes - codes[train].mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    score = np.zeros((codes.shape[1], factors.shape[1]))
    for d, code in enumerate(codes.T[..., None]):  # each (N, 1)
        for k, factor in enumerate(factors.T):
            seen = np.unique(factor[train])
            if seen.size == 1:  # few rows: no code can tell values apart, a gap of 0
                score[d, k] = np.mean(factor[test] == seen[0])
                continue
            svm = LinearSVC(C=0.01, class_weight="balanced", dual=False)
            score[d, k] = svm.fit(code[train], factor[train]).score(code[test], factor[test])
    best = np.sort(score, axis=0)[::-1]
    return _unit(np.mean(best[0] - best[1]))


def factor_vae_score(
    codes: Array,
    factors: Array,
    *,
    batch_size: int = 64,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    prune_threshold: float = 0.05,
    seed: int = 0,
) -> float:
    """The FactorVAE disentanglement score (Kim & Mnih 2018).

    A vote: a factor k drawn uniformly, a value of it drawn as a random row's, and
    `batch_size` rows (with replacement) of the data that have that value. Dividing each
    code by its standard deviation over the data, the code of least variance in the batch
    votes for k. Each code is assigned the factor it got most of `num_train` votes for; the
    score is the share of `num_eval` further votes that the assignment gets right.

    Codes whose standard deviation over the data is below `prune_threshold` (collapsed to
    the prior) take no part. When all are, the score is that of a guess, 1/K, where
    disentanglement_lib gives 0: a single code that tells nothing about the factors scores
    about 1/K, and nothing at all should not score less.

    Args:
        codes: (N, D) posterior means.
        factors: (N, K) integer-coded factors; for the votes to hold the other factors'
            distribution, a full grid of their values (as dSprites and 3D Shapes are).
        batch_size: rows per vote, >= 2.
        num_train: votes that assign the codes to factors.
        num_eval: votes that score the assignment.
        prune_threshold: the least standard deviation of a code that takes part.
        seed: draws the votes.
    """
    codes, factors = _arrays(codes, factors, "factor_vae_score")
    if batch_size < 2:
        raise InputError(
            f"factor_vae_score: batch_size must be >= 2 for a variance, got {batch_size}"
        )
    spread = codes.std(axis=0)
    active = (spread >= prune_threshold) & (spread > 0)  # a constant code has no variance ratio
    if not active.any():
        return 1 / factors.shape[1]
    codes = codes[:, active] / spread[active]
    rng = np.random.default_rng(seed)
    # members[k][v]: the rows whose factor k has value v.
    members = [
        [np.flatnonzero(factor == v) for v in range(factor.max() + 1)] for factor in factors.T
    ]

    def votes(count: int) -> np.ndarray:
        tally = np.zeros((factors.shape[1], codes.shape[1]), dtype=np.int64)  # (K, active D)
        for _ in range(_positive("num_train and num_eval", count)):
            k = rng.integers(factors.shape[1])
            rows = rng.choice(members[k][factors[rng.integers(len(factors)), k]], batch_size)
            tally[k, codes[rows].var(axis=0, ddof=1).argmin()] += 1
        return tally

    assignment = votes(num_train).argmax(axis=0)  # (active D,) each code's factor
    held_out = votes(num_eval)
    return _unit(held_out[assignment, np.arange(codes.shape[1])].sum() / held_out.sum())


def _arrays(
    codes: Array, factors: Array, metric: str, min_dims: int = 1, varying: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Codes as (N, D) float64 and factors as (N, K) int64 recoded to 0..n_k − 1, checked."""
    codes, factors = (
        x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        for x in (codes, factors)
    )
    if codes.ndim != 2 or factors.ndim != 2:
        raise InputError(
            f"{metric} takes codes (N, D) and factors (N, K), got shapes {codes.shape} and "
            f"{factors.shape}: one row per image (reshape a single one with [:, None])"
        )
    if len(codes) != len(factors):
        raise InputError(
            f"{metric}: codes have {len(codes)} rows and factors {len(factors)}: "
            "give one row of factors per code"
        )
    if codes.shape[1] < min_dims:
        wanted = (
            "2 dimensions, to take the gap between the best two" if min_dims == 2 else "1 dimension"
        )
        raise InputError(f"{metric} needs codes of at least {wanted}, got {codes.shape[1]}")
    if factors.shape[1] < 1:
        raise InputError(f"{metric} needs at least 1 factor, got factors of shape {factors.shape}")
    if not np.issubdtype(factors.dtype, np.integer):
        raise InputError(
            f"{metric}: factors have dtype {factors.dtype}, not integer: give each factor's "
            "values as classes 0, 1, ... (e.g. dSprites' latents_classes, not latents_values)"
        )
    if not np.isfinite(codes).all():
        raise InputError(f"{metric}: codes hold NaN or infinite values")
    classes = np.stack([np.unique(factor, return_inverse=True)[1] for factor in factors.T], 1)
    classes = classes.astype(np.int64)
    return codes.astype(np.float64), _varying(classes, metric) if varying else classes


def _varying(factors: np.ndarray, metric: str) -> np.ndarray:
    """The factors, checked to take at least 2 values each in these rows."""
    single = [k for k in range(factors.shape[1]) if np.unique(factors[:, k]).size < 2]
    if single:
        raise InputError(
            f"{metric}: factor(s) {single} take a single value in these {len(factors)} rows; "
            "a factor needs at least 2 values (drop it, or give rows where it varies)"
        )
    return factors


def _split(
    num_rows: int, num_train: int, num_test: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random train and test rows; all rows in the ratio num_train : num_test
    when there are fewer than both."""
    num_train, num_test = _positive("num_train", num_train), _positive("num_test", num_test)
    if num_train + num_test > num_rows:
        num_train = min(max(1, round(num_rows * num_train / (num_train + num_test))), num_rows - 1)
        num_test = num_rows - num_train
    rows = np.random.default_rng(seed).permutation(num_rows)
    return rows[:num_train], rows[num_train : num_train + num_test]


def _certainty(importance: np.ndarray) -> float:
    """DCI's disentanglement of the rows of a (rows, columns) importance matrix: 1 − the
    entropy of each row over the columns (base: their number), weighted by the rows'
    shares of the total importance. Transposed, completeness."""
    rows, columns = importance.shape
    # The tiny constant makes a row of zeros an even spread, certainty 0; a single column
    # has entropy 0 in any base, certainty 1.
    per_row = 1 - entropy(importance.T + 1e-12, base=max(columns, 2))
    total = importance.sum()
    weights = importance.sum(axis=1) / total if total > 0 else np.full(rows, 1 / rows)
    return _unit(weights @ per_row)


def _positive(name: str, size: int) -> int:
    """The size, checked to be a positive integer."""
    if int(size) != size or size < 1:
        raise InputError(f"{name} must be a positive integer, got {size}")
    return int(size)


def _unit(value: float) -> float:
    """A score as a float in [0, 1] (clipping rounding errors such as 1 + 1e-16)."""
    return float(np.clip(value, 0.0, 1.0))


def scores(
    codes: Array,
    factors: Array,
    *,
    num_train: int = 10_000,
    num_test: int = 5_000,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, float]:
    """Every metric of this module, keyed as a run logs them (`test/mig`, ...): `mig`,
    `dci_disentanglement`, `dci_completeness`, `dci_informativeness`, `sap`, `factor_vae`.

    `num_train` rows train (DCI's forests, SAP's SVMs, the FactorVAE votes; MIG's
    histograms), `num_test` score (held-out rows; FactorVAE's held-out votes), `batch_size`
    is FactorVAE's. Factors that take one value in these rows are left out (they carry no
    information to capture); with none left, no scores.
    """
    factors = factors.detach().cpu().numpy() if isinstance(factors, torch.Tensor) else factors
    factors = np.asarray(factors)
    if factors.ndim == 2:  # else _arrays says what is wrong
        factors = factors[:, [np.unique(f).size > 1 for f in factors.T]]
        if factors.shape[1] == 0:
            return {}
    found = {"mig": mig(codes, factors, num_samples=num_train, seed=seed)}
    dci_scores = dci(codes, factors, num_train=num_train, num_test=num_test, seed=seed)
    found.update({f"dci_{name}": value for name, value in dci_scores.items()})
    found["sap"] = sap(codes, factors, num_train=num_train, num_test=num_test, seed=seed)
    found["factor_vae"] = factor_vae_score(
        codes, factors, batch_size=batch_size, num_train=num_train, num_eval=num_test, seed=seed
    )
    return found

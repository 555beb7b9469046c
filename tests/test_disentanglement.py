"""Disentanglement metrics on representations whose answer is known: the factors themselves,
the factors mixed by rotations, a constant, permuted codes, and MIG computed by hand."""

import functools
import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab.disentanglement import captured_factors, dci, factor_vae_score, mig, sap
from vaelab.errors import InputError

ROOT = Path(__file__).resolve().parents[1]

# A full grid of 4 factors with 3, 4, 5 and 4 values (240 rows), three times over.
SIZES = (3, 4, 5, 4)
FACTORS = np.tile(np.array(list(itertools.product(*map(range, SIZES)))), (3, 1))
# Each factor standardised (so that a rotation weighs them alike), plus a little noise.
FACTORS_AS_CODES = (FACTORS - FACTORS.mean(0)) / FACTORS.std(0) + np.random.default_rng(0).normal(
    0, 0.01, FACTORS.shape
)
# A Hadamard rotation: every code is the four factors in equal parts, ± 1/2 each.
HADAMARD = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]) / 2
ROTATION, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))  # random, orthogonal
REPRESENTATIONS = {
    "factors": FACTORS_AS_CODES,
    "hadamard": FACTORS_AS_CODES @ HADAMARD,
    "rotated": FACTORS_AS_CODES @ ROTATION,
    "constant": np.zeros(FACTORS.shape),
    "noise": np.random.default_rng(1).normal(size=FACTORS.shape),
}
PERMUTATION = [2, 0, 3, 1]
# Chance accuracy of predicting a factor from nothing: its most frequent value's share.
CHANCE = np.mean([1 / size for size in SIZES])


def scores(codes: np.ndarray, seed: int = 0) -> dict[str, float]:
    # Fewer FactorVAE votes than the default 10,000 + 5,000 keeps the test short.
    by_dci = {f"dci_{key}": value for key, value in dci(codes, FACTORS, seed=seed).items()}
    return {
        "mig": mig(codes, FACTORS, seed=seed),
        "sap": sap(codes, FACTORS, seed=seed),
        "factor_vae": factor_vae_score(codes, FACTORS, num_train=2000, num_eval=1000, seed=seed),
        **by_dci,
    }


@functools.cache
def scored(name: str) -> dict[str, float]:
    return scores(REPRESENTATIONS[name])


def test_the_factors_themselves_score_near_1():
    ours = scored("factors")
    assert ours["mig"] > 0.99 and ours["factor_vae"] == 1.0
    assert ours["dci_disentanglement"] > 0.99 and ours["dci_completeness"] > 0.99
    assert ours["dci_informativeness"] == 1.0
    # The right code is the one SVM above chance; a linear SVM on one code cannot single
    # out a factor's middle values, so its accuracy stays well below 1.
    assert 0.25 < ours["sap"] < 1 - CHANCE


def test_a_rotation_that_mixes_every_factor_into_every_code_scores_about_0():
    ours = scored("hadamard")
    assert ours["mig"] < 0.02 and ours["sap"] < 0.02
    assert ours["dci_disentanglement"] < 0.02 and ours["dci_completeness"] < 0.02
    # Every factor moves every code alike: the least-variance code is a coin toss.
    assert abs(ours["factor_vae"] - 1 / len(SIZES)) < 0.05
    # A rotation loses no information.
    assert ours["dci_informativeness"] > 0.9


def test_a_random_rotation_scores_lower_except_for_the_factor_vae_score():
    ours, theirs = scored("rotated"), scored("factors")
    assert ours["mig"] < 0.6 * theirs["mig"]
    assert ours["dci_disentanglement"] < 0.6 * theirs["dci_disentanglement"]
    assert ours["dci_completeness"] < 0.6 * theirs["dci_completeness"]
    assert ours["sap"] < 0.8 * theirs["sap"]
    assert ours["dci_informativeness"] > 0.9
    # The FactorVAE score sees only which code a factor moves the most: this rotation's
    # largest entries lie on different codes for different factors, so it stays 1.
    assert sorted(np.abs(ROTATION).argmax(axis=1)) == [0, 1, 2, 3]
    assert ours["factor_vae"] == 1.0


def test_a_constant_representation_scores_0_or_chance():
    ours = scored("constant")
    assert ours["mig"] == 0 and ours["sap"] == 0
    assert ours["dci_disentanglement"] == 0 and ours["dci_completeness"] == 0
    assert ours["factor_vae"] == 1 / len(SIZES)
    assert abs(ours["dci_informativeness"] - CHANCE) < 0.05


def test_a_representation_of_noise_scores_about_0_or_chance():
    ours = scored("noise")
    assert ours["mig"] < 0.05 and ours["sap"] < 0.05
    assert ours["dci_disentanglement"] < 0.1 and ours["dci_completeness"] < 0.1
    # 0.30: this noise's spread differs a little between the factors' groups of rows.
    assert abs(ours["factor_vae"] - 1 / len(SIZES)) < 0.1
    # Held out: the forests fit the training rows' noise, which tells nothing of the others.
    assert abs(ours["dci_informativeness"] - CHANCE) < 0.05


@pytest.mark.parametrize("name", ["factors", "rotated"])
def test_permuting_the_codes_changes_no_score(name):
    codes = REPRESENTATIONS[name]
    ours, permuted = scored(name), scores(codes[:, PERMUTATION])
    for metric in ("mig", "sap", "factor_vae"):
        assert permuted[metric] == ours[metric], metric
    for part in ("disentanglement", "completeness", "informativeness"):
        # Trees break ties between equally good codes by a random order of the codes.
        assert permuted[f"dci_{part}"] == pytest.approx(ours[f"dci_{part}"], abs=0.01), part


def test_scaling_a_code_changes_no_score():
    # By powers of 2, which scale floating-point numbers exactly.
    codes = REPRESENTATIONS["rotated"] * np.array([64, 1, 1 / 8, 1])
    assert scores(codes) == scored("rotated")


def test_dci_tells_a_code_of_two_factors_from_a_factor_in_two_codes():
    f0, f1, f2, f3 = FACTORS_AS_CODES.T
    # Code 0 holds f0 and f1 (4 f0 + f1 is one-to-one): its importance is split evenly over
    # 2 of the 4 factors, certainty 1 − ln 2 / ln 4 = 1/2 with weight 2/4, and the other two
    # codes are certain: disentanglement 3/4. Each factor is in one code: completeness 1.
    two_in_one = dci(np.stack([4 * FACTORS[:, 0] + FACTORS[:, 1], f2, f3], axis=1), FACTORS)
    assert two_in_one["disentanglement"] == pytest.approx(0.75, abs=0.02)
    assert two_in_one["completeness"] > 0.98
    # f0 twice: equally good, the trees take either code, half the importance each. f0's
    # completeness is 1 − ln 2 / ln 5 (2 of 5 codes), the others' 1; each code is certain.
    one_in_two = dci(np.stack([f0, f0 + 0.001, f1, f2, f3], axis=1), FACTORS)
    assert one_in_two["disentanglement"] > 0.98
    assert one_in_two["completeness"] == pytest.approx(
        (3 + 1 - np.log(2) / np.log(5)) / 4, abs=0.02
    )


def test_mig_of_codes_that_hold_a_factor_fully_or_in_part():
    """f0 takes 4 values, f1 2. Code 0 is f0 // 2 (1 bit of f0's 2), code 1 is f1, code 2 is
    f0. For f0 the best two codes hold ln 4 and ln 2 nats of its ln 4: gap 1/2; for f1,
    code 1 holds all of it and no other code any: gap 1. MIG = (1/2 + 1) / 2."""
    factors = np.tile(np.array(list(itertools.product(range(4), range(2)))), (5, 1))
    codes = np.stack([factors[:, 0] // 2, factors[:, 1], factors[:, 0]], axis=1).astype(float)
    assert mig(codes, factors) == pytest.approx(0.75, abs=1e-12)


def test_mig_of_a_factor_and_noise_matches_the_definition():
    """Code 0 is f0, code 1 uniform noise: MIG from the joint counts of the binned codes."""
    factors = np.tile(np.array(list(itertools.product(range(3), range(4)))), (50, 1))
    noise = np.random.default_rng(1).uniform(size=len(factors))
    codes = np.stack([factors[:, 0], noise], axis=1).astype(float)

    def information(a: np.ndarray, b: np.ndarray) -> float:
        joint = np.zeros((a.max() + 1, b.max() + 1))
        np.add.at(joint, (a, b), 1 / len(a))
        outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
        held = joint > 0
        return float((joint[held] * np.log(joint[held] / outer[held])).sum())

    def binned(code: np.ndarray) -> np.ndarray:  # 20 equal bins over the range
        return np.minimum((20 * (code - code.min()) / np.ptp(code)).astype(int), 19)

    f0, f1 = factors.T
    entropy = [information(f0, f0), information(f1, f1)]  # I(f; f) = H(f)
    assert entropy[0] == pytest.approx(np.log(3)) and entropy[1] == pytest.approx(np.log(4))
    code0, code1 = binned(codes[:, 0]), binned(codes[:, 1])
    gaps = [
        information(code0, f0) - information(code1, f0),
        abs(information(code0, f1) - information(code1, f1)),
    ]
    assert 0 < information(code1, f0) < 0.05  # noise holds a little, by chance
    expected = np.mean(np.divide(gaps, entropy))
    assert mig(codes, factors) == pytest.approx(expected, abs=1e-12)


def test_torch_tensors_score_as_numpy_arrays():
    codes = REPRESENTATIONS["rotated"].astype(np.float32)
    for metric in (mig, sap, factor_vae_score):
        assert metric(torch.from_numpy(codes), torch.from_numpy(FACTORS)) == metric(codes, FACTORS)
    assert dci(torch.from_numpy(codes), torch.from_numpy(FACTORS)) == dci(codes, FACTORS)


def test_a_factor_seen_with_one_value_in_training_has_no_sap_gap():
    # One training row holds one value of each factor: no SVM can be fitted, and every code
    # predicts that value, so every gap is 0 (this raised sklearn's ValueError before).
    codes = REPRESENTATIONS["factors"]
    assert sap(codes, FACTORS, num_train=1, num_test=100) == 0.0
    assert sap(codes, FACTORS, num_train=20, num_test=100) > 0.1  # 20 rows see 2 values or more


def test_each_code_is_matched_with_the_factor_it_holds():
    codes = REPRESENTATIONS["factors"][:, PERMUTATION]  # code d holds factor PERMUTATION[d]
    captured, share = captured_factors(codes, FACTORS)
    assert captured.tolist() == PERMUTATION and (share > 0.95).all()
    # A factor of one value holds no information: no code captures it, and it is no error.
    constant = np.column_stack([FACTORS, np.zeros(len(FACTORS), np.int64)])
    captured, share = captured_factors(np.column_stack([codes, np.ones(len(codes))]), constant)
    assert captured[:4].tolist() == PERMUTATION and share[4] == 0.0
    _, noise_share = captured_factors(REPRESENTATIONS["noise"], FACTORS)
    assert (noise_share < 0.1).all()


def test_the_seed_fixes_the_draws():
    codes = REPRESENTATIONS["rotated"]
    assert scores(codes, seed=1) == scores(codes, seed=1)
    assert scores(codes, seed=1) != scored("rotated")  # the seed draws the split and the votes


CODES = REPRESENTATIONS["factors"]
ALL = [mig, dci, sap, factor_vae_score]
BAD_INPUTS = [
    (ALL, CODES[:-1], FACTORS, "codes have 719 rows and factors 720"),
    (ALL, CODES[:, 0], FACTORS, r"takes codes \(N, D\) and factors \(N, K\), got shapes \(720,\)"),
    (ALL, CODES, FACTORS.astype(float), "factors have dtype float64, not integer"),
    (ALL, CODES, np.c_[FACTORS, np.zeros(720, int)], r"factor\(s\) \[4\] take a single value"),
    (ALL, CODES[:, :0], FACTORS, r"needs codes of at least (1 dimension|2 dimensions.*), got 0"),
    (
        [mig, sap],
        CODES[:, :1],
        FACTORS,
        "at least 2 dimensions, to take the gap between the best two, got 1",
    ),
    (ALL, np.where(CODES > 1, np.nan, CODES), FACTORS, "codes hold NaN or infinite values"),
]


@pytest.mark.parametrize(("metrics", "codes", "factors", "message"), BAD_INPUTS)
def test_bad_inputs_get_a_one_line_error(metrics, codes, factors, message):
    for metric in metrics:
        with pytest.raises(InputError, match=message) as error:
            metric(codes, factors)
        assert isinstance(error.value, ValueError) and "\n" not in str(error.value)
        assert str(error.value).startswith(metric.__name__)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: factor_vae_score(CODES, FACTORS, batch_size=1), "batch_size must be >= 2"),
        (lambda: mig(CODES, FACTORS, num_bins=0), "num_bins must be a positive integer, got 0"),
        (lambda: dci(CODES, FACTORS, num_test=0), "num_test must be a positive integer, got 0"),
        (lambda: mig(CODES, FACTORS, num_samples=1), r"factor\(s\) \[0, 1, 2, 3\] take a single"),
    ],
)
def test_bad_sizes_get_a_one_line_error(call, message):
    with pytest.raises(InputError, match=message):
        call()


def test_the_readme_example_runs():
    section = (ROOT / "README.md").read_text().split("## Disentanglement metrics")[1]
    (code,) = re.findall(r"```python\n(.*?)```", section.split("\n## ")[0], re.DOTALL)
    names: dict = {}
    exec(code, names)
    scores = names["scores"]
    parts = {"disentanglement", "completeness", "informativeness"}
    assert set(scores) == {"mig", "sap", "factor_vae", *parts}
    assert all(isinstance(value, float) and 0 <= value <= 1 for value in scores.values())
    assert scores["mig"] > 0.8 and scores["disentanglement"] > 0.9
    assert scores["factor_vae"] == 1.0

"""Target functions, the formula parser and the synthetic-function datamodule."""

import math

import numpy as np
import pytest
import scipy.special
import torch

from kan_lightning.data import (
    FUNCTIONS,
    SyntheticFunctionDataModule,
    get_function,
    make_dataset,
    parse_formula,
    resolve_target,
)

# Independent closed-form references, one row (a tuple of floats) at a time.
REFERENCES = {
    "polynomial": lambda p: p[0] ** 3 + 2 * p[1] ** 2 - p[0] * p[1],
    "trigonometric": lambda p: math.sin(p[0]) * math.cos(p[1]),
    "exponential": lambda p: math.exp(-p[0] ** 2 - p[1] ** 2),
    "discontinuous": lambda p: math.copysign(1.0, p[0]) * abs(p[1]) if p[0] else 0.0,
    "high_frequency": lambda p: math.sin(10 * p[0]) * math.sin(10 * p[1]),
    "guide_example": lambda p: math.sin(p[0]) * math.exp(-p[1] ** 2),
    "paper_exp_sin": lambda p: math.exp(math.sin(math.pi * p[0]) + p[1] ** 2),
    "product": lambda p: p[0] * p[1],
    "high_dim_100": lambda p: math.exp(sum(math.sin(math.pi * v / 2) ** 2 for v in p) / len(p)),
    "bessel": lambda p: float(scipy.special.j0(20 * p[0])),
}


def _points(target, n, seed=0):
    low = torch.tensor([a for a, _ in target.domain], dtype=torch.float64)
    high = torch.tensor([b for _, b in target.domain], dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(n, target.input_dim, generator=g, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# Registry


def test_every_function_has_a_reference():
    assert set(REFERENCES) <= set(FUNCTIONS)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_registered_function_matches_closed_form(name):
    target = get_function(name)
    x = _points(target, 7)
    y = target.fn(x)
    assert y.shape == (7, 1)
    assert torch.isfinite(y).all()
    expected = [REFERENCES[name](tuple(row)) for row in x.tolist()]
    np.testing.assert_allclose(y[:, 0].numpy(), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_registered_function_float32_on_domain(name):
    target = FUNCTIONS[name]
    x = _points(target, 256).float()
    y = target(x)
    assert y.shape == (256, 1) and y.dtype == torch.float32
    assert torch.isfinite(y).all()


def test_registry_domains_and_dims():
    assert FUNCTIONS["high_dim_100"].input_dim == 100
    assert FUNCTIONS["high_dim_100"].domain == ((-1.0, 1.0),) * 100
    assert FUNCTIONS["bessel"].input_dim == 1
    assert FUNCTIONS["polynomial"].domain == ((-2.0, 2.0), (-2.0, 2.0))


def test_unknown_function_lists_known_names():
    with pytest.raises(ValueError, match="nope") as info:
        get_function("nope")
    assert ", ".join(sorted(FUNCTIONS)) in str(info.value)


# ---------------------------------------------------------------------------------------------
# Formula parser

FORMULAS = [
    ("exp(sin(pi*x0)+x1**2)", lambda a, b: np.exp(np.sin(np.pi * a) + b**2)),
    ("x0^2 + 1", lambda a, b: a**2 + 1),  # "^" is a power, with a power's precedence
    ("-x0**2 - -x1", lambda a, b: -(a**2) + b),
    ("+x0 / (2 + e)", lambda a, b: a / (2 + np.e)),
    (
        "sqrt(abs(x0)) * tanh(x1) + arctan(x0*x1)",
        lambda a, b: np.sqrt(abs(a)) * np.tanh(b) + np.arctan(a * b),
    ),
    ("max(x0, x1) - min(x0, 0.5)", lambda a, b: np.maximum(a, b) - np.minimum(a, 0.5)),
    ("besselj0(3*x0) + erf(x1)", lambda a, b: scipy.special.j0(3 * a) + scipy.special.erf(b)),
    (
        "sigmoid(x0) * sign(x1) + floor(2*x0) + ceil(x1)",
        lambda a, b: np.sign(b) / (1 + np.exp(-a)) + np.floor(2 * a) + np.ceil(b),
    ),
]


@pytest.mark.parametrize("formula, reference", FORMULAS)
def test_formula_values_match_numpy(formula, reference):
    target = parse_formula(formula, input_dim=2)
    x = _points(target, 9, seed=1)
    y = target.fn(x)
    assert y.shape == (9, 1)
    expected = reference(x[:, 0].numpy(), x[:, 1].numpy())
    np.testing.assert_allclose(y[:, 0].numpy(), expected, rtol=1e-6, atol=1e-12)


# The usual math names beside numpy's, against Python's math module point by point; x0 in
# (0.05, 0.95) and x1 in (1.05, 3) keep every function inside its real domain.
MATH_NAMES = [
    ("asin(x0*sin(x1))", lambda a, b: math.asin(a * math.sin(b))),  # Feynman I.26.2
    ("acos(x0) + atan(x1)", lambda a, b: math.acos(a) + math.atan(b)),
    ("asinh(x1) - acosh(x1) + atanh(x0)", lambda a, b: math.asinh(b) - math.acosh(b) + math.atanh(a)),
    ("arcsinh(x1) - arccosh(x1) + arctanh(x0)", lambda a, b: math.asinh(b) - math.acosh(b) + math.atanh(a)),
    ("ln(x1) * pow(x0, 1.5) + pow(x1, x0)", lambda a, b: math.log(b) * a**1.5 + b**a),
]


@pytest.mark.parametrize("formula, reference", MATH_NAMES)
def test_formula_math_names_match_math_module(formula, reference):
    target = parse_formula(formula, domain=[[0.05, 0.95], [1.05, 3.0]])
    x = _points(target, 7, seed=2)
    y = target.fn(x)[:, 0].tolist()
    expected = [reference(a, b) for a, b in x.tolist()]
    assert y == pytest.approx(expected, rel=1e-12)


def test_formula_dimension_inference_and_domain():
    target = parse_formula("x1")
    assert target.input_dim == 2
    assert target.domain == ((-1.0, 1.0), (-1.0, 1.0))
    assert parse_formula("x0 + x4").input_dim == 5
    assert parse_formula("x0", input_dim=3).input_dim == 3
    assert parse_formula("x0 + x1", domain=[0, 2]).domain == ((0.0, 2.0), (0.0, 2.0))
    pairs = parse_formula("x0 + x1", domain=[[0, 1], [-3, 3]]).domain
    assert pairs == ((0.0, 1.0), (-3.0, 3.0))


def test_formula_bad_dimension_and_domain():
    with pytest.raises(ValueError, match="x2"):
        parse_formula("x2", input_dim=2)
    with pytest.raises(ValueError, match=r"\[1, 0\]"):
        parse_formula("x0", domain=[1, 0])
    with pytest.raises(ValueError, match="3 pairs"):
        parse_formula("x0 + x1", domain=[[0, 1], [0, 1], [0, 1]])
    with pytest.raises(ValueError, match="input_dim"):
        parse_formula("3.5")


def test_constant_formula_broadcasts():
    target = parse_formula("2*pi", input_dim=3)
    y = target.fn(torch.zeros(4, 3))
    assert y.shape == (4, 1)
    assert torch.allclose(y, torch.full((4, 1), 2 * math.pi))


@pytest.mark.parametrize(
    "formula, piece, column",
    [
        ("__import__('os').system('x')", "__import__('os').system", 1),
        ("x0.__class__", "x0.__class__", 1),
        ("x0 + x0[0]", "x0[0]", 6),
        ("open('f')", "open", 1),
        ("lambda: 1", "lambda: 1", 1),
        ("1 + foo(x0)", "foo", 5),
        ("'abc'", "abc", 1),
        ("sin(x0", "never closed", 4),
        ("sin(x0, base=2)", "base=2", 9),
        ("x0 + __builtins__", "__builtins__", 6),
    ],
)
def test_formula_rejects_unsafe_or_unknown(formula, piece, column):
    with pytest.raises(ValueError) as info:
        parse_formula(formula, input_dim=1)
    message = str(info.value)
    assert piece in message
    assert f"at column {column}" in message


# ---------------------------------------------------------------------------------------------
# resolve_target


def test_resolve_target_needs_exactly_one():
    with pytest.raises(ValueError, match="exactly one"):
        resolve_target()
    with pytest.raises(ValueError, match="exactly one"):
        resolve_target("product", "x0")


def test_resolve_target_domain_override_copies():
    target = resolve_target("product", domain=[0, 3])
    assert target.domain == ((0.0, 3.0), (0.0, 3.0))
    assert FUNCTIONS["product"].domain == ((-1.0, 1.0), (-1.0, 1.0))
    assert resolve_target(formula="x0*x1").input_dim == 2


# ---------------------------------------------------------------------------------------------
# Datamodule


def _dm(**kwargs):
    kwargs.setdefault("n_samples", 200)
    return SyntheticFunctionDataModule(**kwargs)


def test_split_sizes_and_shapes():
    dm = _dm(n_samples=1000, split=(0.7, 0.2, 0.1))
    dm.setup()
    assert dm.x_train.shape == (700, 2) and dm.y_train.shape == (700, 1)
    assert dm.x_val.shape == (200, 2) and dm.x_test.shape == (100, 2)
    assert dm.input_dim == 2 and dm.output_dim == 1
    assert dm.x_train.dtype == dm.y_train.dtype == torch.float32
    assert dm.target.name == "guide_example"
    # Targets are the function of the inputs (no noise, no normalization).
    assert torch.allclose(dm.y_test, dm.target.fn(dm.x_test))


def test_same_seed_same_data_and_setup_is_idempotent():
    a, b = _dm(seed=3, noise_level=0.1), _dm(seed=3, noise_level=0.1)
    a.setup()
    b.setup()
    first = a.x_train
    a.setup("fit")
    assert a.x_train is first
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)


def test_same_seed_same_data_under_a_float64_default_dtype():
    # a script that sets torch's default dtype (e.g. to compare with a float64 library) must
    # still see the points kan-train draws for the seed
    reference = _dm(seed=2, noise_level=0.1)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        other = _dm(seed=2, noise_level=0.1)
        other.setup()
    finally:
        torch.set_default_dtype(old)
    assert torch.equal(reference.x_train, other.x_train) and torch.equal(reference.y_test, other.y_test)


def test_different_seed_different_data():
    a, b = _dm(seed=0), _dm(seed=1)
    assert not torch.equal(a.x_train, b.x_train)


def test_noise_is_relative_to_target_std():
    clean = _dm(n_samples=4000, noise_level=0.0)
    noisy = _dm(n_samples=4000, noise_level=0.1)
    x, y_clean = clean.x_train, clean.y_train
    assert torch.equal(x, noisy.x_train)
    ratio = (noisy.y_train - y_clean).std() / y_clean.std()
    assert 0.08 < ratio < 0.12


def test_normalization_fitted_on_train_only_and_round_trips():
    dm = _dm(n_samples=500, function="polynomial", normalize_inputs=True, normalize_targets=True)
    x_train = dm.x_train
    # inputs: the sampling box [-2, 2]^2 (not the sample's range) maps to [-1, 1], so every split
    # stays inside the KAN's first grid
    assert torch.equal(dm.normalization["x_shift"], torch.zeros(2)) and torch.equal(dm.normalization["x_scale"], torch.full((2,), 2.0))
    for x in (x_train, dm.x_val, dm.x_test):
        assert x.min() >= -1 and x.max() <= 1
    assert abs(float(dm.y_train.mean())) < 1e-5
    assert abs(float(dm.y_train.std(correction=0)) - 1) < 1e-5
    # Statistics come from the raw train split, recomputed independently here.
    raw_x, raw_y = make_dataset(dm.target, 500, seed=0)
    norm = dm.normalization
    assert set(norm) == {"x_shift", "x_scale", "y_mean", "y_std"}
    raw_train_y = dm.denormalize_y(dm.y_train).double()  # (statistics are float64)
    assert norm["y_mean"].dtype == norm["x_scale"].dtype == torch.float64
    assert torch.allclose(norm["y_mean"], raw_train_y.mean(dim=0), atol=1e-4)
    assert not torch.allclose(norm["y_mean"], raw_y.mean(dim=0), atol=1e-6)
    assert torch.allclose(dm.denormalize_y(dm.normalize_y(raw_y)), raw_y, atol=1e-5)
    raw_train_x = x_train * norm["x_scale"] + norm["x_shift"]
    assert torch.allclose(dm.target.fn(raw_train_x), raw_train_y, atol=1e-4)


def test_normalization_identity_when_disabled():
    norm = _dm().normalization
    assert torch.equal(norm["x_shift"], torch.zeros(2))
    assert torch.equal(norm["x_scale"], torch.ones(2))
    assert torch.equal(norm["y_mean"], torch.zeros(1)) and torch.equal(norm["y_std"], torch.ones(1))


def test_state_dict_round_trip():
    source = _dm(normalize_inputs=True, normalize_targets=True)
    state = source.state_dict()
    # Restoring before setup (fresh process) and after setup (Lightning's order) both apply it.
    for setup_first in (False, True):
        other = _dm(seed=5, normalize_inputs=True, normalize_targets=True)
        if setup_first:
            other.setup()
        other.load_state_dict(state)
        for key, value in source.normalization.items():
            assert torch.equal(other.normalization[key], value)
        saved = state["normalization"]
        raw_x = other.x_train * saved["x_scale"] + saved["x_shift"]
        raw_y = other.denormalize_y(other.y_train)
        assert torch.allclose(raw_y.double(), other.target.fn(raw_x), atol=1e-5)
    with pytest.raises(ValueError, match="normalization"):
        _dm().load_state_dict({})


def test_dataloaders():
    dm = _dm(n_samples=100, batch_size=16)
    train = list(dm.train_dataloader())
    assert len(train) == 5 and train[0][0].shape == (16, 2)
    assert torch.equal(torch.cat([b[0] for b in dm.val_dataloader()]), dm.x_val)
    assert torch.equal(torch.cat([b[1] for b in dm.test_dataloader()]), dm.y_test)
    (x_pred,) = next(iter(dm.predict_dataloader()))
    assert torch.equal(x_pred, dm.x_test[:16])
    # Shuffling is seeded: two loaders give the same order.
    again = list(dm.train_dataloader())
    assert all(torch.equal(a[0], b[0]) for a, b in zip(train, again))


def test_full_batch_gives_one_batch():
    dm = _dm(n_samples=100, batch_size="full")
    batches = list(dm.train_dataloader())
    assert len(batches) == 1 and batches[0][0].shape == (80, 2)
    assert len(list(dm.val_dataloader())) == 1


def test_formula_and_grid_sampling():
    dm = _dm(formula="x0 * x1 + x2", domain=[0, 1], n_samples=64, sampling="grid")
    assert dm.input_dim == 3
    x = torch.cat([dm.x_train, dm.x_val, dm.x_test])
    assert len(torch.unique(x[:, 0])) == 4  # a 4 x 4 x 4 grid
    assert x.min() == 0 and x.max() == 1


def test_accepts_omegaconf_lists():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"domain": [[0, 1], [2, 3]], "split": [0.5, 0.25, 0.25]})
    dm = _dm(function="product", domain=cfg.domain, split=cfg.split, n_samples=40)
    assert dm.target.domain == ((0.0, 1.0), (2.0, 3.0))
    assert dm.x_train.shape == (20, 2) and dm.x_train[:, 1].min() >= 2


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"n_samples": 0}, ["n_samples", "0"]),
        ({"n_samples": 5, "split": (0.9, 0.05, 0.05)}, ["n_samples", "would be empty"]),
        ({"noise_level": -0.1}, ["noise_level", "-0.1"]),
        ({"split": (0.5, 0.5, 0.5)}, ["split", "sum"]),
        ({"split": (1.2, -0.1, -0.1)}, ["split", "negative"]),
        ({"split": (0.8, 0.2)}, ["split", "3 entries"]),
        ({"batch_size": 0}, ["batch_size", "0"]),
        ({"batch_size": "all"}, ["batch_size", "all"]),
        ({"sampling": "sobol"}, ["sampling", "sobol"]),
        ({"function": "nope"}, ["nope"]),
        ({"function": "high_dim_100", "sampling": "grid"}, ["grid", "uniform"]),
    ],
)
def test_datamodule_validation(kwargs, words):
    with pytest.raises(ValueError) as info:
        _dm(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_nan_targets_refused_with_count():
    dm = _dm(formula="log(x0)", domain=[[-1, 1]], n_samples=100)
    with pytest.raises(ValueError, match=r"produced \d+ non-finite .* first bad row \d+"):
        dm.setup()
    # The count is exact: log is NaN below 0 and -inf at 0.
    x, _ = make_dataset(parse_formula("x0"), 100, seed=0)
    bad = (x[:, 0] <= 0).nonzero()[:, 0]
    with pytest.raises(ValueError) as info:
        make_dataset(parse_formula("log(x0)"), 100, seed=0)
    assert f"produced {len(bad)} non-finite" in str(info.value)
    assert f"first bad row {int(bad[0])}" in str(info.value)


def test_targets_exact_in_float64_not_float32_roundings():
    # the KAN paper's toy exp(sin(pi x) + y^2): a float64 model must see the function, not its
    # float32 rounding (~1e-7 relative), which extrapolation past the training sample amplifies
    dm = _dm(function="paper_exp_sin", n_samples=500, dtype="float64")
    x = dm.x_train
    assert x.dtype == dm.y_train.dtype == torch.float64
    assert torch.equal(x, _dm(function="paper_exp_sin", n_samples=500).x_train.double())  # the same points
    exact = torch.exp(torch.sin(torch.pi * x[:, :1]) + x[:, 1:] ** 2)
    assert torch.allclose(dm.y_train, exact, rtol=1e-15, atol=0)
    assert (dm.y_train.float().double() != dm.y_train).float().mean() > 0.9


def test_data_dtype_follows_the_trainer_precision():
    from kan_lightning.compose import compose_config

    assert compose_config(["experiment=paper_grid_extension"]).data.dtype == "float64"  # (precision 64-true)
    assert compose_config([]).data.dtype == "float32"
    with pytest.raises(ValueError, match=r"dtype must be one of \['float32', 'float64'\], got 'float16'"):
        _dm(dtype="float16")

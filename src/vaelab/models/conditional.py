"""The conditional VAE (Sohn et al. 2015): q(z|x, y), p(x|z, y) and p(z), or a learned
p(z|y), for y the labels a data source has: its classes, or a chosen subset of its
ground-truth factors (data=shapes, dsprites).

`condition=labels` (conf/condition/labels.yaml) names `LabelCondition`; the train task fills
in what the data say (`resolve_condition`: which label columns, how many values each takes),
so a checkpoint's hyperparameters rebuild the model without the data. y enters the networks
as one-hot codes (one block per conditioned label, E numbers in all), concatenated:

- the encoder sees [flatten(x), y] or x with E constant channels, as the model class
  declares (`ModelCapabilities.label_input`: model=mlp "features", model=conv "channels");
  its networks are the model class's own (`NetworkVAE.encoder_class`, `decoder_class`);
- the decoder sees [z, y];
- p(z) is the prior group's, or `prior=per_class` (`ClassPrior`), a diagonal Gaussian whose
  mean and log-scale are linear in the one-hot code: one Gaussian per class for class labels.

The objectives and estimators call `posterior(x)`, `prior()` and `observation(z)` as for any
VAE: inside `given(vae, y)` a `ConditionalVAE` answers them for the batch's labels, so the
ELBO, the IWAE bound and the estimators are those of log p(x|y).
"""

import inspect
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from vaelab.errors import ConfigError, InputError
from vaelab.likelihoods import Likelihood
from vaelab.models.capabilities import ConditionalPrior
from vaelab.models.priors import Prior, _diagonal_normal
from vaelab.models.vae import VAE, as_likelihood

TARGET = "vaelab.models.conditional.LabelCondition"


class LabelCondition(nn.Module):
    """Which labels condition the model, and their one-hot code.

    Args:
        sizes: the values each conditioned label takes (labels are 0 .. size - 1).
        columns: the factor columns of (B, K) labels that condition the model; None: the
            labels are (B,) classes (then `sizes` has one entry).
        names: each conditioned label's name, for the pictures ("class", or a factor's).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        columns: Sequence[int] | None = None,
        names: Sequence[str] | None = None,
    ):
        super().__init__()
        self.sizes = [int(s) for s in sizes]
        self.columns = None if columns is None else [int(c) for c in columns]
        self.names = list(names or ["class"] * len(self.sizes))
        if not self.sizes or min(self.sizes) < 1:
            raise ConfigError(f"condition.sizes must be positive integers, got {sizes!r}")
        if self.columns is not None and len(self.columns) != len(self.sizes):
            raise ConfigError("condition.columns and condition.sizes must have one entry each")

    @property
    def code_dim(self) -> int:
        """E, the length of the one-hot code."""
        return sum(self.sizes)

    def labels(self, y: Tensor) -> Tensor:
        """The conditioned labels of a batch's y, (B, L) int64: y (B,) of classes, or the
        chosen columns of y (B, K) of factor values."""
        if self.columns is None:
            if y.ndim != 1:
                raise InputError(
                    f"this model is conditioned on class labels (B,), got {tuple(y.shape)}"
                )
            return y.long()[:, None]
        if y.ndim != 2 or y.shape[1] <= max(self.columns):
            raise InputError(
                f"this model is conditioned on factor columns {self.columns} of labels (B, K), "
                f"got labels of shape {tuple(y.shape)}"
            )
        return y.long()[:, self.columns]

    def one_hot(self, y: Tensor) -> Tensor:
        """The code of a batch's labels y: (B, E) float, one block per conditioned label."""
        labels = self.labels(y)
        for i, size in enumerate(self.sizes):
            column = labels[:, i]
            if len(column) and (column.min() < 0 or column.max() >= size):
                raise InputError(
                    f"label {self.names[i]} takes values 0..{size - 1} in this model, got "
                    f"{int(column.min())}..{int(column.max())}"
                )
        blocks = [nn.functional.one_hot(labels[:, i], size) for i, size in enumerate(self.sizes)]
        return torch.cat(blocks, -1).float()

    def rows(self, per_row: int, base: Tensor | None = None) -> Tensor:
        """Labels for a grid with a row per value of the first conditioned label (at most
        `MAX_ROWS` rows), `per_row` images each: (rows * per_row,) classes or, for factors,
        (rows * per_row, K) copies of `base` (one label row (K,), default all 0) with the
        first conditioned factor set per row."""
        first = torch.arange(min(self.sizes[0], MAX_ROWS)).repeat_interleave(per_row)
        if self.columns is None:
            return first
        width = max(self.columns) + 1 if base is None else len(base)
        y = torch.zeros(width, dtype=torch.long) if base is None else base.long().cpu()
        y = y.repeat(len(first), 1)
        y[:, self.columns[0]] = first
        return y


# A grid row per value of the first conditioned label, up to this many (dSprites' x has 32).
MAX_ROWS = 16


class ClassPrior(Prior, ConditionalPrior):
    """A learned p(z|y) = N(μ(y), diag σ(y)²), μ and log σ linear in y's one-hot code: for
    class labels one Gaussian per class (initialised at N(0, I)); for several factors, each
    factor's value adds its own shift.

    Args:
        latent_dim: D.
        code_dim: E, the length of the one-hot code (filled in from the condition).
    """

    def __init__(self, latent_dim: int, code_dim: int):
        super().__init__(latent_dim)
        self.code_dim = code_dim
        self.loc = nn.Parameter(torch.zeros(code_dim, latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(code_dim, latent_dim))

    def distribution(self, encode: Any = None) -> Distribution:
        raise ConfigError(
            "prior=per_class is p(z|y): it needs a conditional model, condition=labels"
        )

    def given(self, code: Tensor) -> Distribution:
        """p(z|y) for one-hot codes (B, E): batch shape (B,), event shape (D,)."""
        return _diagonal_normal(code @ self.loc, (code @ self.log_scale).exp())


class ConditionalVAE(VAE):
    """A VAE whose encoder, decoder (and, with `ClassPrior`, prior) also take y's one-hot
    code. Use it inside `given(vae, y)`: `posterior`, `prior` and `observation` then answer
    for the labels y of the batch.

    Args:
        encoder: built for the joined input (`join`): flattened x and the code, or x with
            E more channels (as the model class declares, its `label_input`).
        decoder: built for latents of D + E numbers, [z, code].
        latent_dim: D.
        likelihood, obs_scale, value_range, posterior: as `VAE`'s.
        prior: p(z), or a `ClassPrior` p(z|y).
        condition: the labels and their code.
        channels: join the code to x as channels (label_input "channels", model=conv)
            rather than to flattened x ("features", model=mlp).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        latent_dim: int,
        likelihood: str,
        obs_scale: float,
        condition: LabelCondition,
        channels: bool,
        prior: Prior | None = None,
        posterior: nn.Module | None = None,
        value_range: tuple[float, float] | None = (0.0, 1.0),
    ):
        super().__init__(
            encoder, decoder, latent_dim, likelihood, obs_scale, value_range, prior, posterior
        )
        self.condition = condition
        self.channels = channels
        self._code: Tensor | None = None

    @property
    def decoder_input_dim(self) -> int:
        return self.latent_dim + self.condition.code_dim

    @contextmanager
    def given(self, y: Tensor) -> Iterator[None]:
        """Answer `posterior`, `prior` and `observation` for labels y (B,) or (B, K)."""
        previous, self._code = self._code, self.condition.one_hot(y).to(self.device)
        try:
            yield
        finally:
            self._code = previous

    @property
    def code(self) -> Tensor:
        """The one-hot code (B, E) of the labels given (`given`)."""
        if self._code is None:
            raise InputError(
                "this VAE is conditional: give the labels, with vaelab.models.conditional."
                "given(vae, y): ..."
            )
        return self._code

    def join(self, x: Tensor) -> Tensor:
        """The encoder's input: x and the code, as channels or after flattened x."""
        code = self.code
        if self.channels:
            maps = code[:, :, None, None].expand(-1, -1, *x.shape[2:])
            return torch.cat([x, maps.to(x.dtype)], 1)
        return torch.cat([x.flatten(1), code.to(x.dtype)], 1)

    def posterior(self, x: Tensor) -> Distribution:
        """q(z|x, y): batch shape (B,), event shape (D,)."""
        joined = self.join(x)
        if self.posterior_model.context_dim:
            return self.posterior_model(*self.encoder(joined, with_context=True))
        return self.posterior_model(*self.encoder(joined))

    def prior(self) -> Distribution:
        """p(z|y) (batch shape (B,)) for a `ClassPrior`, else the prior group's p(z)."""
        if self.prior_model.needs_condition:  # a p(z|y) (`ClassPrior`): given the code
            return self.prior_model.given(self.code)
        return super().prior()

    def _encode_gaussian(self, u: Tensor) -> Distribution:
        raise ConfigError(
            "prior=vamp's components q(z|u_k) need a label for each pseudo-input in a "
            "conditional model: use prior=standard, mog or per_class"
        )

    def observation(self, z: Tensor) -> Any:
        """p(x|z, y) for z (..., D) whose last batch dimension is the batch's (or 1)."""
        code = self.code
        shape = torch.broadcast_shapes(z.shape[:-1], code.shape[:-1])
        joined = torch.cat(
            [z.expand(*shape, z.shape[-1]), code.to(z.dtype).expand(*shape, code.shape[-1])], -1
        )
        return super().observation(joined)

    @torch.no_grad()
    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """Posterior means E_q[z|x, y]: (B, D)."""
        with given(self, y) if y is not None else nullcontext():
            return super().encode(x)

    @torch.no_grad()
    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """Means of p(x|z, y) for z (B, D) and labels y (B,) or (B, K)."""
        with given(self, y) if y is not None else nullcontext():
            return self.observation(z).mean

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """decode(encode(x, y), y): (B, C, H, W)."""
        with given(self, y) if y is not None else nullcontext():
            return super().reconstruct(x)

    @torch.no_grad()
    def sample(  # type: ignore[override]
        self, n: int, generator: torch.Generator | None = None, y: Tensor | None = None
    ) -> Tensor:
        """Decode n draws z ~ p(z|y): (n, C, H, W). Without y, the first conditioned
        label's values in order, n // values each (the rest of the n: the last value)."""
        if y is None:
            per_value = max(1, math.ceil(n / min(self.condition.sizes[0], MAX_ROWS)))
            y = self.condition.rows(per_value)[:n]
        devices = [self.device] if self.device.type == "cuda" else []
        with given(self, y), torch.random.fork_rng(devices=devices):
            if generator is not None:
                torch.manual_seed(generator.initial_seed())
            pz = self.prior()
            z = pz.sample() if pz.batch_shape else pz.sample((len(y),))
            return self.observation(z).mean


def given(vae: nn.Module, y: Tensor) -> AbstractContextManager:
    """`vae.given(y)` for a `ConditionalVAE`; nothing for any other model (it ignores y)."""
    return vae.given(y) if isinstance(vae, ConditionalVAE) else nullcontext()


def build_conditional_vae(
    condition: Mapping[str, Any],
    model: Mapping[str, Any],
    image_shape: tuple[int, ...],
    latent_dim: int,
    likelihood: Likelihood | str,
    obs_scale: float | None,
    prior: Mapping[str, Any] | None,
    posterior: Mapping[str, Any] | None,
) -> ConditionalVAE:
    """The conditional VAE of a `model` node's class for a resolved condition node
    (`resolve_condition`), with the prior and posterior nodes: the class's own networks
    (`NetworkVAE.encoder_class`, `decoder_class`) built with its arguments (the node's, else
    the class's defaults), the encoder for x joined to y's code as its declared
    `label_input` says, the decoder for [z, code].

    Raises:
        ConfigError: a model that declares no `label_input` (model=hvae), or an argument
            its class does not take.
    """
    from vaelab.models.architectures import NetworkVAE
    from vaelab.models.parts import build_part_class, build_posterior, build_prior

    cls = build_part_class(model, NetworkVAE, VAE, "model")
    likelihood, obs_scale = as_likelihood(likelihood, obs_scale), None
    if not (cls.label_input and issubclass(cls, NetworkVAE)):
        raise ConfigError(
            f"condition=labels needs a model whose networks take the labels (one that "
            f"declares label_input, e.g. model=mlp or conv), not the model {cls.__name__}: "
            "use model=mlp or conv, or condition=none"
        )
    context = dict(
        image_shape=image_shape, latent_dim=latent_dim, likelihood=likelihood, obs_scale=obs_scale
    )
    args = {k: v for k, v in model.items() if k != "_target_"}
    accepted = inspect.signature(cls).parameters
    unknown = [k for k in args if k in context or k not in accepted or k in ("prior", "posterior")]
    if unknown:
        raise ConfigError(
            f"model.{unknown[0]} is not an argument of {cls.__name__}; its arguments: "
            f"{', '.join(n for n in accepted if n not in (*context, 'prior', 'posterior'))}"
        )
    bound = inspect.signature(cls).bind(**context, **args)
    bound.apply_defaults()  # the class's own defaults: as the unconditional model's
    hidden_dim, activation = bound.arguments["hidden_dim"], bound.arguments["activation"]
    label = LabelCondition(**{k: v for k, v in condition.items() if k != "_target_"})
    code_dim = label.code_dim
    channels, height, width = image_shape
    as_channels = cls.label_input == "channels"
    joined = (
        (channels + code_dim, height, width)
        if as_channels
        else (channels * height * width + code_dim,)
    )
    return ConditionalVAE(
        cls.encoder_class(joined, latent_dim, hidden_dim, activation),
        cls.decoder_class(
            likelihood.param_shape(image_shape), latent_dim + code_dim, hidden_dim, activation
        ),
        latent_dim,
        likelihood,
        obs_scale,
        label,
        as_channels,
        prior=build_prior(prior, latent_dim, image_shape, code_dim=code_dim),
        # a flow posterior conditions on the encoder's last hidden features
        posterior=build_posterior(posterior, latent_dim, context_dim=hidden_dim),
        value_range=bound.arguments["value_range"],
    )


def resolve_condition(node: Mapping[str, Any] | None, datamodule: Any) -> dict[str, Any] | None:
    """The condition node of a config (condition=labels: `factors`, or none) completed from
    the data: which label columns condition the model and how many values each takes.
    None for condition=none.

    Raises:
        ConfigError: data without labels (a folder without class subfolders), factors the
            data do not have, or factors asked of data with class labels.
    """
    if not node or "_target_" not in node:
        return None
    if "sizes" in node:  # already resolved (a run's saved hyperparameters)
        return dict(node)
    name = datamodule.hparams.get("name", "the data")
    if not datamodule.labelled:
        raise ConfigError(
            f"condition=labels needs labels, and data={name} has none (a folder without class "
            "subfolders): put the images in one subfolder per class, or use condition=none"
        )
    labels = datamodule.train_labels
    factor_names = tuple(datamodule.factor_names)
    factors = node.get("factors")
    if not factor_names:
        if factors:
            raise ConfigError(
                f"condition.factors is for data with ground-truth factors; data={name} has "
                "class labels: leave condition.factors=null"
            )
        return {"_target_": TARGET, "sizes": [int(labels.max()) + 1], "columns": None,
                "names": ["class"]}  # fmt: skip
    chosen = list(factors or factor_names)
    unknown = [f for f in chosen if f not in factor_names]
    if unknown:
        raise ConfigError(
            f"condition.factors names {', '.join(map(str, unknown))}, which data={name} does "
            f"not have; its factors: {', '.join(factor_names)}"
        )
    columns = [factor_names.index(f) for f in chosen]
    sizes = [int(labels[:, c].max()) + 1 for c in columns]
    return {"_target_": TARGET, "sizes": sizes, "columns": columns, "names": chosen}

"""Policies that act from explicit noise, and the RELAX control variate.

:class:`GumbelPolicy` is SB3's :class:`ActorCriticPolicy` (same networks, initialisation,
optimizer and save format) for factorised discrete actions (``Discrete``, ``MultiDiscrete``,
``MultiBinary``: :class:`~relax_rl.actions.ActionSpec`), with a lean path for the collect loop:
logits and values in one pass, the action from stored noise (Gumbel-max per categorical
dimension, a logistic threshold per bit), no distribution objects. ``predict`` keeps SB3's API,
so evaluation callbacks work as is.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import torch as th
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import FlattenExtractor, MlpExtractor
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn

from relax_rl.actions import ActionSpec
from relax_rl.estimators import uniform_noise

#: Hidden activations by name (configs, ``policy_kwargs.activation_fn``, RELAX's ``cv_activation``).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}


#: Layers that behave the same in training and evaluation mode.
_MODE_FREE: tuple[type[nn.Module], ...] = (
    nn.Sequential,
    nn.Linear,
    nn.Flatten,
    nn.Identity,
    *ACTIVATIONS.values(),
    FlattenExtractor,
    MlpExtractor,
)


class GumbelPolicy(ActorCriticPolicy):
    """Factorised discrete actor (flat logits, SB3's layout: ``n`` for ``Discrete(n)``,
    ``sum(nvec)`` for ``MultiDiscrete``, ``d`` for ``MultiBinary(d)``), or for ``Box(D)`` a
    diagonal Gaussian with SB3's state-independent ``log_std`` (logits ``[mean, log_std]``,
    ``2 D``), and critic V(s) over SB3's MLP extractor."""

    def __init__(
        self, observation_space: spaces.Space, action_space: spaces.Space, *args: Any, **kwargs: Any
    ) -> None:
        self.action_spec = ActionSpec(action_space)  # refuses other spaces in one line
        super().__init__(observation_space, action_space, *args, **kwargs)
        self._mode_free = all(m is self or type(m) in _MODE_FREE for m in self.modules())

    def logits_and_values(self, obs: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """Action logits ``(N, K)`` and state values ``(N,)`` in one pass (SB3's ``forward``'s
        modules and numbers); for many calls with the same parameters, :meth:`forward_function`."""
        return self.forward_function()(obs)

    def forward_function(self) -> Callable[[th.Tensor], tuple[th.Tensor, th.Tensor]]:
        """:meth:`logits_and_values` as a plain function of the parameter tensors as they are
        (the optimizer updates them in place, so it stays valid while no module is replaced).

        It skips ``nn.Module.__call__`` (hooks) and attribute look-ups, a large share of a small
        network's cost in the per-step collect loop, which builds one per rollout.
        """
        pi_net, vf_net = _plain(self.mlp_extractor.policy_net), _plain(self.mlp_extractor.value_net)
        action_head, value_head = _plain(self.action_net), _plain(self.value_net)

        log_std = self.log_std if self.action_spec.continuous else None

        def forward(obs: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
            pi_features, vf_features = self._features(obs)
            logits = action_head(pi_net(pi_features))
            if log_std is not None:  # a Gaussian's "logits": [mean, log_std]
                logits = th.cat([logits, log_std.expand_as(logits)], dim=-1)
            return logits, value_head(vf_net(vf_features)).squeeze(-1)

        return forward

    def _features(self, obs: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """The actor's and the critic's features (SB3's ``extract_features``; for a non-image
        Box under the default flatten extractor, its arithmetic without the module calls)."""
        space = self.observation_space
        if (
            self.share_features_extractor
            and type(self.features_extractor) is FlattenExtractor
            and isinstance(space, spaces.Box)
            and not (self.normalize_images and is_image_space(space, check_channels=False))
        ):
            flat = obs.float().flatten(1)
            return flat, flat
        features = self.extract_features(obs)
        return (features, features) if self.share_features_extractor else features

    def actor_features(self, obs: th.Tensor) -> th.Tensor:
        """The features the actor sees."""
        return self._features(obs)[0]

    def set_training_mode(self, mode: bool) -> None:
        """SB3's switch between training and evaluation mode, skipped where it changes nothing:
        when every layer behaves the same in both (no dropout, no batch statistics), or the
        policy is already in ``mode``. Switching walks every submodule, twice per update."""
        if mode != self.training and not self._mode_free:
            super().set_training_mode(mode)

    def actor_parameters(self) -> list[nn.Parameter]:
        """theta of the policy-gradient estimator: everything that shapes the logits."""
        modules: list[nn.Module] = [self.mlp_extractor.policy_net, self.action_net]
        modules.append(self.pi_features_extractor)
        seen: set[int] = set()
        params = [self.log_std] if self.action_spec.continuous else []
        for m in modules:
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        features = self.extract_features(observation)
        pi_features = features if self.share_features_extractor else features[0]
        logits = self.action_net(self.mlp_extractor.forward_actor(pi_features))
        spec = self.action_spec
        if spec.continuous:
            logits = th.cat([logits, self.log_std.expand_as(logits)], dim=-1)
        if deterministic:
            return spec.mode(logits)
        noise = spec.perturb(uniform_noise((len(logits), spec.n_noise), device=logits.device))
        return spec.sample(logits, noise)[0]


#: Stateless activations as the tensor functions they call.
_ELEMENTWISE: dict[type[nn.Module], Callable[[th.Tensor], th.Tensor]] = {
    nn.Tanh: th.tanh,
    nn.ReLU: th.relu,
}


def _plain(module: nn.Module) -> Callable[[th.Tensor], th.Tensor]:
    """``module``'s forward bound to its current tensors, without ``nn.Module.__call__``."""
    if type(module) is nn.Sequential:
        layers = [_plain(m) for m in module]

        def sequential(x: th.Tensor) -> th.Tensor:
            for layer in layers:
                x = layer(x)
            return x

        return sequential
    if type(module) is nn.Linear:
        return partial(F.linear, weight=module.weight, bias=module.bias)
    return _ELEMENTWISE.get(type(module), module.forward)


class StateActionControlVariate(nn.Module):
    """RELAX's discrete control variate ``c_hat(z, s) = kappa * MLP([s, r])`` with
    ``r = relax(z / tau)`` the relaxed action (each categorical dimension's softmax, each bit's
    sigmoid: :meth:`~relax_rl.actions.ActionSpec.relax`) (Grathwohl et al. 2018, Sec. 6.3 and
    App. E), ``kappa`` and ``tau`` learned, both starting at 1. It sees the whole relaxed action
    at once, so each dimension's score term is corrected with the other dimensions' noise.

    With ``linear_term``, ``c_hat = kappa * (MLP([s, r]) + (W s + w0) . r)``: a term linear in
    the relaxed action with state-dependent coefficients, which represents a reward that is a
    sum over action dimensions (each weighed by the state) exactly, where an MLP over the
    concatenation has to learn the products; it starts at 0.

    :param obs_dim: flattened observation size.
    :param action_spec: the action space's distribution (the size and relaxation of ``z``).
    :param net_arch: hidden layer sizes (the paper: ``[10, 10]``).
    :param activation_fn: hidden activation (the paper: ReLU).
    :param kappa_init: initial ``kappa`` (1 in the paper; 0 starts RELAX as its baseline agent).
    :param linear_term: add the state-dependent linear term.
    :param zero_init: start the MLP's output layer at 0, so that ``c_hat`` starts at 0 (RELAX
        starts as its baseline agent) and its first steps grow it from there instead of
        correcting with a random function of the size of PyTorch's initialisation.
    :param per_dimension: each action dimension ``i`` gets its own control variate,
        ``c_i(z_i) = c_hat(r)`` with ``r_i = relax(z_i / tau)`` and every other dimension at
        its *sampled* value (one-hot / the bit): RELAX for dimension ``i`` given the others,
        whose noise no longer reaches dimension ``i``'s score term through ``z~``'s relaxation
        (only through what ``c_hat`` fails to model). Unbiased, since the other dimensions are
        independent of dimension ``i``'s noise and logits: given them, it is the one-variable
        RELAX (Wu et al. 2018's factorised action-dependent baseline, with RELAX's
        reparameterised term for the dimension's own sample). Costs one evaluation of ``c_hat``
        per dimension; the same as the joint form for one dimension and for Gaussians (LAX).
    :param logit_term: add ``sum_k u(p_k) r_k``, with ``p_k`` the policy's (detached)
        preference for relaxed column ``k``'s value (a bit's logit, a categorical value's
        log-probability: :meth:`~relax_rl.actions.ActionSpec.preferences`) and ``u`` a small MLP
        from one number to one, shared by every column and starting at 0. How much a
        dimension's value moves the return is often a function of how strongly the policy
        prefers it (for an entropy-regularised optimal policy the advantage is ``alpha log pi``
        up to a state term); one ``u`` learns it from every dimension at once, where the
        linear term's ``W`` has a coefficient per (state feature, column) to learn. Its inputs
        are functions of the state (detached from theta), so the estimator stays unbiased.
        Discrete actions only.
    :param centred: the linear and logit terms act on the relaxed action minus the policy's
        mean of the sampled one (each bit's probability, each categorical's probabilities),
        ``coef . (r - E_pi[H(z)])``: a state-dependent constant shifted out of ``c_hat``, so
        the terms have mean 0 given the state (the critic already centres the advantages) and
        their coefficients are fit on centred, uncorrelated features (given the state the
        dimensions are independent). The linear term's state input is centred too, by a
        running mean of the states of *earlier* batches (:meth:`observe`). Still unbiased:
        both means are constants or functions of the state, detached from theta. Discrete
        actions only. (MultiBinaryMatch d = 32, a frozen policy: +0.46 decades after 250 phi
        steps where the uncentred terms get +0.21.)
    """

    #: samples per affine-projection step of :meth:`fit_linear` (a solve of this size)
    LINEAR_CHUNK = 64

    def __init__(
        self,
        obs_dim: int,
        action_spec: ActionSpec,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        kappa_init: float = 1.0,
        linear_term: bool = False,
        zero_init: bool = False,
        per_dimension: bool = False,
        logit_term: bool = False,
        centred: bool = False,
        linear_regression: bool = False,
    ) -> None:
        super().__init__()
        if linear_regression and not (linear_term and centred):
            raise ValueError(
                "the linear term's regression needs the centred linear term "
                "(linear_term=True, centred=True)"
            )
        for name, wanted in (("logit term", logit_term), ("centring", centred)):
            if wanted and action_spec.continuous:
                raise ValueError(
                    f"the control variate's {name} needs discrete actions "
                    f"(Discrete, MultiDiscrete, MultiBinary), got {action_spec.space}"
                )
        self.centred = centred and (linear_term or logit_term)
        self.action_spec = action_spec
        self.per_dimension = per_dimension and not action_spec.continuous and action_spec.n_dims > 1
        # each relaxed column's action dimension (a buffer: it follows the module's device)
        self.register_buffer("_columns", action_spec.column_dims.clone(), persistent=False)
        relaxed_dim = action_spec.relaxed_dim
        layers: list[nn.Module] = []
        width = obs_dim + relaxed_dim
        for hidden in net_arch if net_arch is not None else [10, 10]:
            layers += [nn.Linear(width, hidden), activation_fn()]
            width = hidden
        output = nn.Linear(width, 1)
        if zero_init:
            nn.init.zeros_(output.weight)
            nn.init.zeros_(output.bias)
        layers.append(output)
        self.net = nn.Sequential(*layers)
        self.coefficients: nn.Linear | None = None
        if linear_term:
            self.coefficients = nn.Linear(obs_dim, relaxed_dim)
            nn.init.zeros_(self.coefficients.weight)
            nn.init.zeros_(self.coefficients.bias)
        self.preference_net: nn.Sequential | None = None
        if logit_term:
            self.preference_net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))
            nn.init.zeros_(self.preference_net[-1].weight)
            nn.init.zeros_(self.preference_net[-1].bias)
        if self.centred:
            # the linear term's state input is centred by the states of earlier batches
            self.register_buffer("obs_mean", th.zeros(obs_dim))
            self.register_buffer("obs_batches", th.zeros((), dtype=th.long))
        self.linear_regression = linear_regression
        if linear_regression:
            # fit_linear's preconditioner: each state feature's running mean square
            self.register_buffer("linear_square", th.zeros(obs_dim + 1))
            self.register_buffer("linear_batches", th.zeros((), dtype=th.long))
            assert self.coefficients is not None
            self.coefficients.requires_grad_(False)  # set by fit_linear, not by phi's optimizer
        self.kappa = nn.Parameter(th.tensor(float(kappa_init)))
        self.log_tau = nn.Parameter(th.zeros(()))
        # Output scale set from outside (RELAX's running advantage scale), applied where
        # `scaled`; 1 = the paper's form.
        self.register_buffer("scale", th.ones(()))
        self.scaled = True

    def shape(
        self, z: th.Tensor, obs: th.Tensor, preferences: th.Tensor | None = None
    ) -> th.Tensor:
        """``c_hat / kappa`` per sample: ``z`` is ``(N, K)``, ``obs`` the flattened
        ``(N, obs_dim)``, ``preferences`` the policy's (``logit_term``'s input, ``(N, K)``)."""
        return self._at(self.action_spec.relax(z, self.log_tau.exp()), obs, preferences)

    @th.no_grad()
    def observe(self, obs: th.Tensor, decay: float = 0.99) -> None:
        """After an update, fold its batch's states (the actor's features, ``(N, obs_dim)``)
        into the running mean that centres the linear term's input for LATER batches (the
        current batch's would make ``c_hat`` depend on the samples it corrects). A no-op
        unless ``centred``."""
        if not self.centred:
            return
        batch_mean = obs.reshape(-1, self.obs_mean.shape[0]).mean(0)
        if int(self.obs_batches) == 0:
            self.obs_mean.copy_(batch_mean)
        else:
            self.obs_mean.lerp_(batch_mean, 1 - decay)
        self.obs_batches += 1

    @th.no_grad()
    def fit_linear(
        self,
        obs: th.Tensor,
        actions: th.Tensor,
        preferences: th.Tensor,
        residual: th.Tensor,
        step: float,
        decay: float,
    ) -> None:
        """``linear_regression``: after an update, move the linear term towards the return at the
        taken actions ``H(z)``, for LATER batches. The term is ``theta . phi`` with features
        ``phi_kf = (H_k - m_k) x_f`` (``x`` the centred state and a 1, ``m`` the policy's
        mean action). The batch (in chunks of :attr:`LINEAR_CHUNK` samples) takes an affine
        projection step (adaptive filtering's normalised least mean squares, for a block of
        samples): the smallest change of ``theta`` in the metric ``P^-1`` that explains the
        fraction ``step`` of every sample's residual ``e`` at once, ``theta += P Phi^T (Phi P
        Phi^T)^-1 step e``, with ``P`` the inverse of a running mean of each state feature's
        square (a diagonal preconditioner, the same for every column: state features of any
        scale move alike; not scaled by the action's part, which would make the rare flips of
        a confident dimension move its coefficients most). ``step`` in (0, 2) is stable
        whatever the samples' correlations; the residual is of the whole ``c``, so every
        column's step sees the others' fits (where a per-column regression would carry the
        other columns' noise). The variance objective's gradient reaches each of the
        ``K (obs_dim + 1)`` weights only through a product of two noisy per-sample terms.

        :param obs: the actor's features ``(N, obs_dim)``.
        :param actions: the taken actions.
        :param preferences: the policy's preferences at the batch's states ``(N, K)``.
        :param residual: ``A - c(H(z))`` per sample, per unit of kappa, with ``c`` as it is now.
        :param step: the normalised step size, in (0, 2).
        :param decay: per-batch decay of the features' running mean square.
        """
        assert self.linear_regression and self.coefficients is not None
        x = obs.reshape(-1, self.obs_mean.shape[0]) - self.obs_mean
        x = th.cat([x, x.new_ones(x.shape[0], 1)], dim=-1)  # (N, F)
        w = self.action_spec.hard(actions) - self.action_spec.mean_hard(preferences)  # (N, K)
        square = (x * x).mean(0)
        if int(self.linear_batches) == 0:
            self.linear_square.copy_(square)
        else:
            self.linear_square.lerp_(square, 1 - decay)
        self.linear_batches += 1
        precondition = (1.0 / (self.linear_square + 1e-8)).expand(w.shape[1], -1)  # (K, F)
        scale = self.scale if self.scaled else 1.0
        error = residual.reshape(-1) / scale
        delta = th.zeros_like(precondition)
        for rows in th.arange(len(error), device=error.device).split(self.LINEAR_CHUNK):
            # phi for this chunk only, (n, K, F): a whole batch's can be large (N K F)
            features = w[rows].unsqueeze(-1) * x[rows].unsqueeze(1)
            moved = features * precondition  # P phi
            # the chunk's residuals after the earlier chunks' steps
            left = error[rows] - (features * delta).sum((1, 2))
            gram = features.flatten(1) @ moved.flatten(1).T  # phi_n . P phi_m
            ridge = 1e-4 * gram.diagonal().mean() + 1e-12
            gram = gram + ridge * th.eye(len(rows), device=gram.device)
            weights = th.linalg.solve(gram, step * left)
            delta += th.einsum("n,nkf->kf", weights, moved)
        self.coefficients.weight.add_(delta[:, :-1])
        self.coefficients.bias.add_(delta[:, -1])

    @property
    def needs_preferences(self) -> bool:
        """Whether ``c_hat`` takes the policy's preferences (the logit term, centring)."""
        return self.preference_net is not None or self.centred

    def _coefficients(
        self, obs: th.Tensor, preferences: th.Tensor | None
    ) -> tuple[th.Tensor, th.Tensor] | None:
        """The terms linear in the relaxed action: each column's coefficient ``(N, K)`` and
        the per-sample constant subtracted with them (``coef . E_pi[H(z)]`` when centred, else
        0), or ``None`` without a linear or logit term."""
        if self.needs_preferences and preferences is None:
            raise ValueError("this control variate needs the policy's preferences")
        coef = None
        if self.coefficients is not None:
            coef = _plain(self.coefficients)(obs - self.obs_mean if self.centred else obs)
        if self.preference_net is not None:
            own = _plain(self.preference_net)(preferences.unsqueeze(-1)).squeeze(-1)
            coef = own if coef is None else coef + own
        if coef is None:
            return None
        if not self.centred:
            return coef, coef.new_zeros(())
        mean = self.action_spec.mean_hard(preferences)
        return coef, (coef * mean).sum(-1)

    def _per_dimension(
        self,
        z: th.Tensor,
        actions: th.Tensor,
        obs: th.Tensor,
        preferences: th.Tensor | None = None,
    ) -> th.Tensor:
        """``c_i / kappa`` of every dimension ``i``, ``(N, D)``, at ``z`` (``(N, K)``: the
        samples ``z`` and ``z~`` stacked, the first half's rows matching ``actions`` and
        ``obs``, as the second's): ``c_hat`` at the sampled action with dimension ``i``'s
        columns replaced by their relaxation. The rows differ only in one dimension's columns,
        so the first layer's product with the sampled action (and the linear term's) is
        computed once per sample and each dimension adds its own columns' part."""
        spec, columns = self.action_spec, self._columns
        relaxed = spec.relax(z, self.log_tau.exp())
        repeats = len(relaxed) // len(actions)
        hard = spec.hard(actions).repeat(repeats, 1)
        obs = obs.repeat(repeats, 1)
        if preferences is not None:
            preferences = preferences.repeat(repeats, 1)
        delta = relaxed - hard  # nonzero on the relaxed dimension's columns only
        first = self.net[0]
        assert isinstance(first, nn.Linear)
        w_action = first.weight[:, obs.shape[-1] :]  # (H, K)
        at_sample = F.linear(th.cat([obs, hard], dim=-1), first.weight, first.bias)  # (N, H)
        rows = at_sample.unsqueeze(1).expand(-1, spec.n_dims, -1)
        rows = rows.index_add(1, columns, delta.unsqueeze(-1) * w_action.T)  # (N, D, H)
        out = _plain(self.net[1:])(rows).squeeze(-1)
        linear = self._coefficients(obs, preferences)
        if linear is not None:
            coef, offset = linear
            own = th.zeros_like(out).index_add(1, columns, coef * delta)
            out = out + ((coef * hard).sum(-1) - offset).unsqueeze(-1) + own
        return self.scale * out if self.scaled else out

    def _at(
        self, relaxed: th.Tensor, obs: th.Tensor, preferences: th.Tensor | None = None
    ) -> th.Tensor:
        """``c_hat / kappa`` at relaxed actions ``(N, K)``."""
        out = _plain(self.net)(th.cat([obs, relaxed], dim=-1)).squeeze(-1)
        linear = self._coefficients(obs, preferences)
        if linear is not None:
            coef, offset = linear
            out = out + (coef * relaxed).sum(-1) - offset
        return self.scale * out if self.scaled else out

    def forward(
        self, z: th.Tensor, obs: th.Tensor, preferences: th.Tensor | None = None
    ) -> th.Tensor:
        """``c_hat(z, s)`` per sample."""
        return self.kappa * self.shape(z, obs, preferences)

    def correction(
        self,
        logits: th.Tensor,
        actions: th.Tensor,
        noise_g: th.Tensor,
        noise_v: th.Tensor,
        obs: th.Tensor,
        tilde_weight: th.Tensor | None = None,
        create_graph: bool = True,
        value: th.Tensor | None = None,
        z_weight: th.Tensor | None = None,
    ) -> RelaxCorrection:
        """RELAX's per-sample correction in logit space, per unit of ``kappa``: with
        ``c = c_hat / kappa`` (:meth:`shape`), ``w`` = ``tilde_weight`` and ``w'`` =
        ``z_weight`` (1 by default),

        ``h_i = w_i c(z~_i) dlog pi(a_i)/dl_i + d(w_i c(z~_i) - w'_i c(z_i))/dl_i``,

        so that ``-A_i dlog pi/dl_i + kappa h_i`` is the logit gradient of RELAX's surrogate
        to minimise (Grathwohl et al. 2018, Eq. 10, with ``f = -A``); ``w`` weighs the terms
        that depend on the taken action (PPO's ratio), ``w'`` the term of ``c(z)`` where it
        depends on the taken action through the other dimensions (per dimension under a
        joint ratio: ``r / r_d``). ``z`` is rebuilt from the stored
        perturbation at the current logits and ``z~ ~ p(z | a)`` from the stored ``v``; the
        score term is in closed form. With ``create_graph``, ``h`` keeps its graph to phi (for
        the variance objective); ``obs`` are the actor's features, constant in theta. With
        ``per_dimension``, ``c`` is each logit's own dimension's ``c_d``, ``w`` may be one
        weight per dimension ``(N, D)``, and ``c_z``, ``c_tilde`` are ``(N, D)``.

        :param logits: the current logits ``(N, K)`` (detached inside: ``h`` is a constant in
            theta, to be sent back through the network by the caller).
        :param value: ``(N,)``, a state term subtracted from ``c``: ``c = shape - value``, so
            that ``c_hat = kappa (Q(z, s) - V(s))`` with ``shape`` modelling the return and
            ``value`` the critic's (a function of the state fixed before the batch: unbiased;
            constant in the logits, it moves only the score term).
        """
        spec = self.action_spec
        logits = logits.detach().requires_grad_()
        prefs = None
        if self.needs_preferences:  # a function of the state (detached from theta)
            prefs = spec.preferences(logits.detach())
        with th.enable_grad():
            z, z_tilde = spec.rebuild(logits, actions, noise_g, noise_v)
            both = th.cat([z, z_tilde])
            if self.per_dimension:
                c_z, c_tilde = self._per_dimension(both, actions, obs, prefs).chunk(2)
            else:
                if prefs is not None:
                    prefs = prefs.repeat(2, 1)
                c_z, c_tilde = self.shape(both, obs.repeat(2, 1), prefs).chunk(2)
            if value is not None:
                value = value.detach().reshape(-1, *([1] * (c_z.dim() - 1)))
                c_z, c_tilde = c_z - value, c_tilde - value
            weighted, weighted_z = _weigh(c_tilde, tilde_weight), _weigh(c_z, z_weight)
            # per dimension, c_i depends on its own dimension's logits only: one gradient of
            # the sum gives each dimension its own reparameterised terms
            (dc,) = th.autograd.grad(
                (weighted - weighted_z).sum(), logits, create_graph=create_graph
            )
        score = spec.score(logits.detach(), actions)
        # each logit's score term is scaled by its own dimension's c(z~)
        per_logit = weighted[:, self._columns] if self.per_dimension else weighted.unsqueeze(-1)
        h = th.addcmul(dc, per_logit, score)
        if not create_graph:
            h, c_z, c_tilde = h.detach(), c_z.detach(), c_tilde.detach()
        return RelaxCorrection(h, score, c_z, c_tilde)


def _weigh(c: th.Tensor, weight: th.Tensor | None) -> th.Tensor:
    """``weight * c`` with a weight per sample ``(N,)`` or per dimension ``(N, D)``."""
    if weight is None:
        return c
    if weight.dim() < c.dim():
        weight = weight.unsqueeze(-1)
    return weight * c


class RelaxCorrection(NamedTuple):
    """:meth:`StateActionControlVariate.correction`'s output (per unit of ``kappa``)."""

    #: ``(N, K)``: the correction's logit gradient
    h: th.Tensor
    #: ``(N, K)``: ``dlog pi(a)/d logits`` (constant)
    score: th.Tensor
    #: ``(N,)``: ``c(z)`` and ``c(z~)`` (``(N, D)``: each dimension's, per dimension)
    c_z: th.Tensor
    c_tilde: th.Tensor

"""Policies that act from explicit noise (RELAX's control variate: :mod:`relax_rl.control_variate`).

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
from typing import Any

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
        features = self._features if not self._plain_flatten() else _flat_features

        def forward(obs: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
            pi_features, vf_features = features(obs)
            logits = action_head(pi_net(pi_features))
            if log_std is not None:  # a Gaussian's "logits": [mean, log_std]
                logits = th.cat([logits, log_std.expand_as(logits)], dim=-1)
            return logits, value_head(vf_net(vf_features)).squeeze(-1)

        return forward

    def _plain_flatten(self) -> bool:
        """Whether the features are the observation flattened (a non-image Box under the
        default, shared flatten extractor): then no module needs calling."""
        space = self.observation_space
        return (
            self.share_features_extractor
            and type(self.features_extractor) is FlattenExtractor
            and isinstance(space, spaces.Box)
            and not (self.normalize_images and is_image_space(space, check_channels=False))
        )

    def _features(self, obs: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """The actor's and the critic's features (SB3's ``extract_features``; for a non-image
        Box under the default flatten extractor, its arithmetic without the module calls)."""
        if self._plain_flatten():
            return _flat_features(obs)
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


def _flat_features(obs: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
    flat = obs.float().flatten(1)
    return flat, flat


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

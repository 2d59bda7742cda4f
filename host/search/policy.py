"""The GNN actor-critic, plugged into stable-baselines3 PPO through its extension points.

* :class:`GraphExtractor` (a ``BaseFeaturesExtractor``) unpads the Dict observation into a PyG batch and
  runs a GATv2 encoder (128 hidden by default) whose edge attributes are TRAINED embeddings of the edge
  types. It returns, flattened per sample, the node embeddings, the choice mask and the mean-pooled graph
  embedding.
* :class:`GraphActorCriticPolicy` (an ``ActorCriticPolicy``) maps EACH node embedding to that node's K
  logits with one shared linear head (softly bounded, invalid choices masked out), and the pooled embedding to the
  value.

No parameter depends on the number of nodes, so a policy trained on one model loads into the PPO of another
model (:func:`save_policy` / :func:`load_policy_weights`); only the feature width F and vocabulary size K
must match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn
from torch_geometric.nn import GATv2Conv

from host.errors import SearchError
from host.search.env import MAX_EDGE_TYPES

POLICY_FORMAT = "autosculpt-gnn-policy/1"
_MASKED_LOGIT = -1e4
# A choice logit passes through unchanged up to +-LOGIT_FREE and is softly bounded by +-LOGIT_CAP beyond it
# (:func:`soft_cap`). PPO here also learns from plans its policy did not propose (relabelled projections, screened
# and warm-up plans); under an unbounded, near-deterministic policy such a plan's log-probability is hundreds of
# nats down, one optimizer step moves the log-ratio of the plan's ~50 choices past exp's float32 range, and the
# update turns every weight into NaN (a policy pretrained over three models had logit gaps of ~315). A gap of 40
# nats is already deterministic in practice, and far past the cap the gradient vanishes, so such a plan no longer
# moves the update; the free range keeps a fresh policy's calibrated prior (logits within +-1) exactly as it was.
LOGIT_FREE, LOGIT_CAP = 10.0, 20.0


def soft_cap(logits: torch.Tensor, free: float = LOGIT_FREE, cap: float = LOGIT_CAP) -> torch.Tensor:
    """``logits`` unchanged within +-``free``, beyond it ``free + (cap - free) * tanh(excess / (cap - free))``:
    continuous with slope 1 at ``free``, bounded by ``cap``, and with a vanishing gradient far past it."""
    size = abs(logits)
    excess = (size - free).clamp(min=0.0)
    bounded = torch.sign(logits) * (free + (cap - free) * torch.tanh(excess / (cap - free)))
    return torch.where(size > free, bounded, logits)


class GraphEncoder(nn.Module):
    """Input projection, ``layers`` GATv2 layers with trained edge-type embeddings, residuals and ReLU."""

    def __init__(self, feature_dim: int, hidden: int = 128, layers: int = 2, heads: int = 1) -> None:
        super().__init__()
        self.input = nn.Linear(feature_dim, hidden)
        self.edge_embedding = nn.Embedding(MAX_EDGE_TYPES, hidden // 4)
        self.convs = nn.ModuleList(
            GATv2Conv(hidden, hidden // heads, heads=heads, edge_dim=hidden // 4, add_self_loops=True)
            for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_type: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.input(x))
        edge_attr = self.edge_embedding(edge_type)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = norm(h + torch.relu(conv(h, edge_index, edge_attr)))
        return h


class GraphExtractor(BaseFeaturesExtractor):
    """Padded Dict observation -> [node embeddings (N_max*H) | choice mask (N_max*K) | pooled (H)]."""

    def __init__(self, observation_space: spaces.Dict, hidden: int = 128, layers: int = 2) -> None:
        n_max, feature_dim = observation_space["x"].shape
        k = observation_space["choice_mask"].shape[1]
        super().__init__(observation_space, features_dim=n_max * (hidden + k) + hidden)
        # n_max only sizes SB3's bookkeeping; forward() takes the node count from the observation
        self.n_max, self.k, self.hidden = n_max, k, hidden
        self.encoder = GraphEncoder(feature_dim, hidden, layers)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = obs["x"]
        batch, n_max, _ = x.shape
        node_mask = obs["node_mask"] > 0.5
        # unpad: one disjoint union of the real nodes/edges of every sample, PyG-style
        offsets = torch.arange(batch, device=x.device) * n_max
        edges, types = [], []
        for b in range(batch):
            e = int(obs["num_edges"][b].reshape(-1)[0])
            edges.append(obs["edge_index"][b, :, :e].long() + offsets[b])
            types.append(obs["edge_type"][b, :e].long())
        edge_index = torch.cat(edges, dim=1)
        edge_type = torch.cat(types)
        # padded nodes stay in the flat tensor (no edges touch them) so the reshape back is trivial;
        # they are excluded from pooling and their actions are masked to one legal choice.
        h = self.encoder(x.reshape(batch * n_max, -1), edge_index, edge_type).reshape(batch, n_max, -1)
        h = h * node_mask.unsqueeze(-1)
        pooled = h.sum(dim=1) / node_mask.sum(dim=1, keepdim=True).clamp(min=1)
        return torch.cat([h.reshape(batch, -1), obs["choice_mask"].reshape(batch, -1), pooled], dim=1)


class _SplitLatent(nn.Module):
    """The SB3 'mlp_extractor' slot: hands the per-node part to the actor and the pooled part to the critic.

    Sizes come from the tensor, not from construction, so the same object serves any padded node count.
    """

    def __init__(self, n_max: int, hidden: int, k: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.latent_dim_pi = n_max * (hidden + k)
        self.latent_dim_vf = hidden

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        return features[:, : features.shape[1] - self.hidden]

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return features[:, features.shape[1] - self.hidden :]


class PerNodeActor(nn.Module):
    """The same head on every node embedding -> K logits per node (:func:`soft_cap` bounded); invalid choices masked
    out."""

    def __init__(self, hidden: int, k: int) -> None:
        super().__init__()
        self.hidden, self.k = hidden, k
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, k))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        batch = latent.shape[0]
        n_max = latent.shape[1] // (self.hidden + self.k)
        h = latent[:, : n_max * self.hidden].reshape(batch, n_max, self.hidden)
        mask = latent[:, n_max * self.hidden :].reshape(batch, n_max, self.k)
        logits = soft_cap(self.head(h)).masked_fill(mask < 0.5, _MASKED_LOGIT)
        return logits.reshape(batch, n_max * self.k)


class ValueHead(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(pooled)


class GraphActorCriticPolicy(ActorCriticPolicy):
    """ActorCriticPolicy whose actor is per node and whose critic reads the mean-pooled graph embedding."""

    def __init__(self, *args: Any, keep_logit: float = 0.0, keep_index: int = 0, **kwargs: Any) -> None:
        # keep_logit: initial bias of the "keep" choice. With ~10 valid patterns per layer a uniform start
        # prunes ~90% of the layers at once and nearly every early candidate collapses; the search calibrates
        # this bias so that the untrained policy's plans cost about the target (host.search.projection).
        self.keep_logit = float(keep_logit)
        self.keep_index = int(keep_index)
        kwargs.setdefault("features_extractor_class", GraphExtractor)
        kwargs.setdefault("share_features_extractor", True)
        super().__init__(*args, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(keep_logit=self.keep_logit, keep_index=self.keep_index)
        return data

    def _build_mlp_extractor(self) -> None:
        fx = self.features_extractor
        self.mlp_extractor = _SplitLatent(fx.n_max, fx.hidden, fx.k)

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        fx = self.features_extractor
        # replace SB3's dense Linear(latent, N_max*K) with the shared per-node head, then rebuild the
        # optimizer so it holds the parameters that are really used
        self.action_net = PerNodeActor(fx.hidden, fx.k)
        self.value_net = ValueHead(fx.hidden)
        last = self.action_net.head[-1]
        nn.init.orthogonal_(last.weight, gain=0.01)
        nn.init.zeros_(last.bias)
        with torch.no_grad():
            last.bias[self.keep_index] = self.keep_logit
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def evaluate_layers(self, obs: dict[str, torch.Tensor]
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The policy per node, for per-layer PPO (:class:`host.search.ppo.LayerCreditPPO`): (values [B, 1],
        log-probabilities of every choice [B, N_max, K], entropy [B] summed over the nodes as
        :meth:`evaluate_actions` gives it, decides [B, N_max]: True where the node has more than one valid
        choice, i.e. is a layer a plan decides)."""
        latent_pi, latent_vf = self.mlp_extractor(self.extract_features(obs))
        distribution = self._get_action_dist_from_latent(latent_pi)
        log_probs = torch.stack([d.logits for d in distribution.distribution], dim=1)  # Categorical normalizes
        decides = obs["choice_mask"].sum(dim=-1) > 1.5
        return self.value_net(latent_vf), log_probs, distribution.entropy(), decides


def policy_kwargs(hidden: int = 128, layers: int = 2, keep_logit: float = 0.0, keep_index: int = 0) -> dict[str, Any]:
    """The ``policy_kwargs`` to give PPO for the GNN policy."""
    return {
        "features_extractor_kwargs": {"hidden": hidden, "layers": layers},
        "keep_logit": keep_logit,
        "keep_index": keep_index,
    }


def save_policy(policy: GraphActorCriticPolicy, path: Path, vocab: list[str]) -> None:
    """Save the size-independent weights of a trained policy, with what a loader must check."""
    fx = policy.features_extractor
    torch.save(
        {
            "format": POLICY_FORMAT,
            "feature_dim": fx.encoder.input.in_features,
            "num_choices": fx.k,
            "hidden": fx.hidden,
            "layers": len(fx.encoder.convs),
            "vocab": list(vocab),
            "state_dict": {k: v for k, v in policy.state_dict().items() if not k.startswith("mlp_extractor")},
        },
        path,
    )


def read_policy_file(path: Path) -> dict[str, Any]:
    """Load a saved policy file and check its format; SearchError if it is not one of ours."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise SearchError(f"policy file {path} does not exist", hint="pass a policy.pt of an earlier run") from exc
    except Exception as exc:  # torch raises many types for a bad file
        raise SearchError(f"cannot read policy file {path}: {exc}", hint="pass a policy.pt of an earlier run") from exc
    if not isinstance(data, dict) or data.get("format") != POLICY_FORMAT:
        raise SearchError(f"{path} is not an AutoSculpt policy file", hint="pass a policy.pt of an earlier run")
    return data


def load_policy_weights(policy: GraphActorCriticPolicy, data: dict[str, Any], vocab: list[str]) -> None:
    """Load saved weights into ``policy`` (any node count); SearchError if F, K or the vocabulary differ."""
    fx = policy.features_extractor
    mine = (fx.encoder.input.in_features, fx.k, fx.hidden, len(fx.encoder.convs), list(vocab))
    theirs = (data["feature_dim"], data["num_choices"], data["hidden"], data["layers"], data["vocab"])
    if mine != theirs:
        raise SearchError(
            f"policy was trained with (features, choices, hidden, layers, vocab) = {theirs[:4]}, "
            f"this search uses {mine[:4]}",
            hint="train a new policy (omit --policy) or use one saved by this AutoSculpt version",
        )
    missing, unexpected = policy.load_state_dict(data["state_dict"], strict=False)
    if unexpected or [m for m in missing if not m.startswith("mlp_extractor")]:
        raise SearchError(f"policy file does not match the network ({missing=}, {unexpected=})")

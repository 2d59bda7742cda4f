"""The closed sets of names the host passes around, one :class:`~enum.StrEnum` each.

A member is its string (``Precision.INT8 == "int8"``, ``json.dumps`` writes ``"int8"``), so journals,
``result.json`` and the CLI keep their text; code compares against members, never against literals, and a
stored string reads back with ``Kind(text)``. A leaf module: it imports nothing of the project.
"""

from __future__ import annotations

from enum import StrEnum


class ObjectiveName(StrEnum):
    """What a search minimises besides accuracy loss."""

    LATENCY = "latency"  # measured p50 on the device(s)
    ENERGY = "energy"  # measured idle-subtracted energy per inference
    FLOPS = "flops"  # MACs (the paper's objective; no device)

    @property
    def measured(self) -> bool:
        """True when the objective's figure comes from a device."""
        return self != ObjectiveName.FLOPS


class Precision(StrEnum):
    """Numeric precision of the artifacts a search measures and delivers."""

    FP32 = "fp32"
    INT8 = "int8"  # PT2E with the XNNPACK quantizer, per-channel symmetric weights


class Phase(StrEnum):
    """Which stage of a search journaled a candidate."""

    DENSE = "dense"  # the unpruned model: the reference of relative targets
    FLOOR = "floor"  # the most aggressive plan, measured before the search (is the target reachable?)
    SEARCH = "search"  # proposed by the policy (or a seed); counts against the budget
    FINAL = "final"  # fine-tuned with masks fixed, exported and verified


class Stage(StrEnum):
    """A step of a search's progress display."""

    PREPARE = "prepare"
    DENSE = "dense"
    WARMUP = "warm-up"  # PPO's proxy warm-up before the first real candidate (PPOSettings.proxy_plans)
    SEARCH = "search"
    FINAL = "final"
    REPORT = "report"


class Strategy(StrEnum):
    """How plans are proposed."""

    PPO = "ppo"  # the GNN policy, trained by PPO on the rewards
    RANDOM = "random"  # the same calibrated prior without learning: a baseline
    EVOLUTION = "evolution"  # aging evolution from that prior, projected like PPO's plans: the stronger baseline


class ConstraintName(StrEnum):
    """The named shapes of the MnasNet reward ``acc * (m / T) ** w`` (see host.search.reward)."""

    HARD = "hard"
    BALANCED = "balanced"
    SOFT = "soft"
    MNASNET = "mnasnet"


class Aggregate(StrEnum):
    """How the ratios of several devices combine into one."""

    WORST = "worst"
    WEIGHTED = "weighted"


def choices(kind: type[StrEnum]) -> tuple[str, ...]:
    """The members' strings, in definition order (argparse ``choices``, error hints)."""
    return tuple(member.value for member in kind)

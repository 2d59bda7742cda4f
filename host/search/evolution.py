"""Regularized (aging) evolution over per-layer plans (Real et al., "Regularized Evolution for Image Classifier
Architecture Search", AAAI 2019): the search-strategy baseline without learning that a learned policy must beat.

The algorithm keeps a population of the ``P`` most recent plans. Each step draws ``S`` members at random (a
tournament), mutates the best of them by reward (the parent) and evaluates the child; the child joins the
population and the OLDEST member leaves, whatever its reward. Removing the oldest rather than the worst is
the "regularization": a plan survives only through its descendants, so one lucky evaluation (a noisy
measurement, a recovery fine-tune that happened to go well) cannot rule the population for the rest of the
search.

It runs on the same footing as ``--strategy ppo``: the initial population is the family seeds, then plans of
the same calibrated prior, every plan (initial or child) is projected into the same cost band by the same
online cost model, and candidates are evaluated, journaled and counted against the budget by the same
evaluator; only the proposals differ. This module is the algorithm alone (numpy, callables, an rng: no
torch, no journal); :meth:`host.search.runner.SearchRunner._evolution_search` wires it to the evaluator.

Choices, for the budgets of this project (8-48 candidates; Real et al. ran P=100, S=25 over 20,000 models):

- **Population** ``P = clamp(budget // 3, 4, 16)`` (:func:`population_size`): about two thirds of the budget
  go to children, which is where evolution differs from the prior it starts from (budget 24: 8 initial plans,
  16 children); at least 4, so the population holds the family seeds (two on a conv net) and some prior
  diversity beside them; at most 16, so a budget of 48 still leaves two generations' worth of children.
- **Tournament** ``S = max(2, P // 3)`` (:func:`tournament_size`): Real et al.'s S/P of 1/4, a little greedier
  because a few dozen steps leave little room to explore; S = 2 (a binary tournament, budgets below 27) is the
  mildest selection that still selects, and P = 16 gives S = 5.
- **Mutation** (:meth:`AgingEvolution.mutate`): one or two layers (equally likely), each re-drawn uniformly
  among its OTHER valid choices, so the child is never its parent's plan. One layer is the finest move; two
  let a child trade cost between layers (tighten one, relax another) before the projection moves the cost
  back into the band. A child the projection maps back onto its parent is mutated again (up to
  :data:`MUTATION_TRIES` times), since that step would spend nothing and learn nothing.
- **Invalid and reused plans do not join.** A plan that cannot be built gets the constant worst reward (-1),
  which says nothing about its neighbours; as a member it would lose every tournament it entered, so all it
  would do is push an informative member out early and shrink the population (at P = 4, two failures would
  halve it). A reused step (a plan already in the journal) spends no budget and brings no new evaluation.
  The population is thus "the last P valid, newly evaluated plans", which is what a resumed run rebuilds
  from the journal's rows in their order (:meth:`AgingEvolution.observe` on each), so a resume continues
  with the population the killed run had.
- **Steps are capped** (:func:`evolve`): steps that drew an already evaluated plan are free, so at most
  ``3 * budget`` steps are taken (as PPO and random search), which ends a search whose every proposal is a
  plan already seen.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

MIN_POPULATION = 4
MAX_POPULATION = 16
MAX_MUTATED_LAYERS = 2
MUTATION_TRIES = 8


def population_size(budget: int) -> int:
    """The default population for a budget: ``clamp(budget // 3, 4, 16)`` (see the module docstring)."""
    return int(min(MAX_POPULATION, max(MIN_POPULATION, budget // 3)))


def tournament_size(population: int) -> int:
    """The default tournament for a population: ``max(2, population // 3)`` (see the module docstring)."""
    return int(max(2, population // 3))


@dataclass(frozen=True)
class Outcome:
    """What the evaluator made of one proposed plan (per-layer choice indices)."""

    choices: np.ndarray
    reward: float
    valid: bool = True  # False: the plan could not be built
    reused: bool = False  # True: the plan was evaluated before; this step spent no budget


@dataclass(frozen=True)
class Member:
    """One plan of the population and its reward."""

    choices: np.ndarray
    reward: float


class AgingEvolution:
    """The population, the tournament and the mutation of aging evolution; see the module docstring.

    ``choice_mask[L, K]``: the valid choices of each layer. ``sample(rng)``: a plan of the prior (the initial
    population is filled from it). ``project(choices)``: the plan moved into the cost band (identity by
    default); applied to prior plans and children alike. Every random draw comes from ``rng``.
    """

    def __init__(self, choice_mask: np.ndarray, rng: np.random.Generator,
                 sample: Callable[[np.random.Generator], np.ndarray],
                 project: Callable[[np.ndarray], np.ndarray] | None = None,
                 population: int = MIN_POPULATION, tournament: int | None = None) -> None:
        self.choice_mask = np.asarray(choice_mask, bool)
        if population < 1:
            raise ValueError(f"population must be at least 1, got {population}")
        self.size = int(population)
        self.tournament_size = int(tournament if tournament is not None else tournament_size(population))
        if not 1 <= self.tournament_size <= self.size:
            raise ValueError(f"tournament size {self.tournament_size} must be within 1..{self.size}")
        self.rng = rng
        self.sample = sample
        self.project = project or (lambda choices: choices)
        # layers with something to change to: the only ones a mutation may touch
        self.mutable = np.flatnonzero(self.choice_mask.sum(axis=1) >= 2)
        self.population: deque[Member] = deque(maxlen=self.size)  # oldest first
        self.last_parent: Member | None = None  # the tournament winner of the latest child()

    @property
    def full(self) -> bool:
        """True once the population holds ``size`` members (from then on every proposal is a child)."""
        return len(self.population) >= self.size

    def observe(self, outcome: Outcome) -> None:
        """Add an evaluated plan: it joins as the youngest member and, the population being full, the oldest
        leaves. Invalid plans and reused steps do not join (see the module docstring)."""
        if outcome.valid and not outcome.reused:
            self.population.append(Member(np.asarray(outcome.choices, np.int64).copy(), float(outcome.reward)))

    def observe_all(self, outcomes: Iterable[Outcome]) -> None:
        """:meth:`observe` each, in order (a resumed run: the journal's rows)."""
        for outcome in outcomes:
            self.observe(outcome)

    def propose(self, n: int) -> list[np.ndarray]:
        """``n`` plans to evaluate together: projected prior plans while the population is not full, else
        children of tournament winners (all drawn from the population as it is now)."""
        if not self.full:
            return [np.asarray(self.project(self.sample(self.rng)), np.int64) for _ in range(n)]
        return [self.child() for _ in range(n)]

    def tournament(self) -> Member:
        """The best (by reward) of ``tournament_size`` members drawn at random without replacement; a tie goes
        to the first drawn."""
        if not self.population:
            raise ValueError("the population is empty")
        size = min(self.tournament_size, len(self.population))
        drawn = self.rng.choice(len(self.population), size=size, replace=False)
        return max((self.population[int(i)] for i in drawn), key=lambda m: m.reward)

    def mutate(self, choices: np.ndarray) -> np.ndarray:
        """``choices`` with one or two layers re-drawn uniformly among their other valid choices."""
        if not len(self.mutable):
            raise ValueError("no layer has more than one valid choice: there is nothing to mutate")
        out = np.asarray(choices, np.int64).copy()
        k = min(len(self.mutable), int(self.rng.integers(1, MAX_MUTATED_LAYERS + 1)))
        for layer in self.rng.choice(self.mutable, size=k, replace=False):
            options = [c for c in np.flatnonzero(self.choice_mask[layer]) if c != out[layer]]
            out[layer] = options[int(self.rng.integers(len(options)))]
        return out

    def child(self, toward: np.ndarray | None = None) -> np.ndarray:
        """A tournament winner mutated and projected; mutated again when the projection undoes the mutation.

        ``toward`` (a plan, e.g. a policy's proposal): the first try re-draws one or two of the layers where
        ``toward`` differs from the parent to ``toward``'s choices instead of uniformly (:meth:`mutate_toward`);
        further tries, and a proposal that agrees with the parent everywhere, mutate uniformly."""
        parent = self.last_parent = self.tournament()
        child = parent.choices
        for attempt in range(MUTATION_TRIES):
            guided = toward is not None and attempt == 0
            mutated = self.mutate_toward(parent.choices, toward) if guided else None
            if mutated is None:
                mutated = self.mutate(parent.choices)
            child = np.asarray(self.project(mutated), np.int64)
            if not np.array_equal(child, parent.choices):
                break
        return child

    def mutate_toward(self, choices: np.ndarray, toward: np.ndarray) -> np.ndarray | None:
        """``choices`` with one or two (equally likely) of the mutable layers where ``toward`` differs set to
        ``toward``'s valid choices, the layers drawn uniformly; None when there is no such layer."""
        toward = np.asarray(toward, np.int64)
        out = np.asarray(choices, np.int64).copy()
        differ = [int(layer) for layer in self.mutable
                  if toward[layer] != out[layer] and self.choice_mask[layer, toward[layer]]]
        if not differ:
            return None
        k = min(len(differ), int(self.rng.integers(1, MAX_MUTATED_LAYERS + 1)))
        for layer in self.rng.choice(differ, size=k, replace=False):
            out[layer] = toward[layer]
        return out


def evolve(algorithm: AgingEvolution, evaluate: Callable[[list[np.ndarray]], Sequence[Outcome]], budget: int,
           width: int = 1, spent: int = 0, steps: int = 0, max_steps: int | None = None) -> tuple[int, int]:
    """Run ``algorithm`` until ``budget`` plans were evaluated (``spent`` already were) or ``max_steps`` steps
    were taken (``steps`` already were; default ``3 * budget``), ``width`` plans at a time, never more than the
    budget has left. ``evaluate(plans)`` returns one :class:`Outcome` per plan, in order. Returns the final
    ``(spent, steps)``."""
    max_steps = 3 * budget if max_steps is None else max_steps
    width = max(1, width)
    while spent < budget and steps < max_steps:
        take = min(width, budget - spent, max_steps - steps)
        outcomes = evaluate(algorithm.propose(take))
        if len(outcomes) != take:
            raise ValueError(f"evaluate returned {len(outcomes)} outcomes for {take} plans")
        steps += take
        for outcome in outcomes:
            algorithm.observe(outcome)
            spent += not outcome.reused
    return spent, steps

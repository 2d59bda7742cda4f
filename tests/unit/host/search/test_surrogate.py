"""Dyna-style imagined updates (host.search.surrogate): the accuracy surrogate, and imagination inside a real PPO
search on a real (tiny) model: the policy moves, the budget, step counter and real rollouts do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from host.search.surrogate import AccuracySurrogate, Imagination
from tests.unit.host.search.nets import ppo_flops_search, record_rollouts


def _surrogate() -> AccuracySurrogate:
    # choices: 0 keep, 1 and 2 of family 0 (removing 25% and 75%), 3 of family 1 (removing 50%)
    return AccuracySurrogate(np.array([0.0, 0.25, 0.75, 0.5]), np.array([-1, 0, 0, 1]))


def test_the_surrogate_learns_which_layers_cost_accuracy():
    """Accuracy falls with what layers 0 and 1 lose, not with the others: fitted on 24 random plans, the
    surrogate ranks held-out plans by their true accuracy and says how far off it is."""
    rng = np.random.default_rng(0)
    surrogate = _surrogate()

    def truth(c: np.ndarray) -> float:
        return 0.9 - 0.5 * surrogate.reductions[c[0]] - 0.3 * surrogate.reductions[c[1]]

    train = [(c, truth(c)) for c in rng.integers(0, 4, (24, 6))]
    surrogate.fit(train)
    test = rng.integers(0, 4, (40, 6))
    predicted = np.array([surrogate.predict(c) for c in test])
    actual = np.array([truth(c) for c in test])
    assert np.corrcoef(predicted, actual)[0, 1] > 0.9
    assert surrogate.fitted_on == 24 and 0 <= surrogate.error < 0.05
    # a plan cutting only the unimportant layers is predicted far better than one cutting the important ones
    assert surrogate.predict(np.array([0, 0, 2, 2, 2, 2])) > surrogate.predict(np.array([2, 2, 0, 0, 0, 0])) + 0.2


def test_the_surrogate_without_spread_predicts_the_mean_and_stays_a_probability():
    surrogate = _surrogate()
    assert surrogate.predict(np.zeros(6, np.int64)) == 0.0  # nothing fitted: no information
    surrogate.fit([(np.zeros(6, np.int64), 0.8), (np.zeros(6, np.int64), 0.6)])
    assert surrogate.predict(np.ones(6, np.int64)) == pytest.approx(0.7)
    surrogate.fit([(np.zeros(6, np.int64), 1.0), (np.full(6, 2), 0.9)])
    assert 0.0 <= surrogate.predict(np.full(6, 3)) <= 1.0


def test_imagination_waits_for_enough_evaluated_plans():
    calls = []
    imagination = Imagination(_surrogate(), lambda: [(np.zeros(6, np.int64), 0.9)] * 3, lambda c: c,
                              lambda c, a: calls.append(1) or a, per_real=4)
    assert imagination.update(model=None, observation=None, real_rollout=4) is False
    assert not calls and imagination.rounds == 0


def _policy_vector(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.policy.parameters()])


@pytest.mark.parametrize("dyna", [0, 4])
def test_imagined_updates_move_the_policy_but_not_the_budget(evaluator, dyna, monkeypatch):
    """A flops-objective PPO search on the shape-checked net, with and without imagination: the same budget of
    evaluated candidates; with it, every round between real rollouts trains on 4x the rollout's plans, each
    projected and rewarded by the surrogate (none reaches the journal), and PPO's step counter counts real
    steps only."""
    from host.kinds import Phase
    from host.search.surrogate import Imagination as Real

    rounds, trained = [], []
    real_update = Real.update

    def spy(self, model, observation, real_rollout):
        before = _policy_vector(model)
        steps = model.num_timesteps
        done = real_update(self, model, observation, real_rollout)
        assert model.num_timesteps == steps  # imagined steps are not PPO's real steps
        rounds.append(done)
        trained.append(bool((before != _policy_vector(model)).any()))
        return done

    monkeypatch.setattr(Real, "update", spy)
    ppo_flops_search(evaluator, budget=10, dyna=dyna)
    journal = evaluator.journal
    assert journal.count(Phase.SEARCH, evaluated_only=True) == 10
    rows = journal.candidates(Phase.SEARCH)
    assert len(rows) <= 30
    if dyna == 0:
        assert rounds == []
    else:
        assert any(rounds) and all(trained[i] for i, done in enumerate(rounds) if done)


def test_the_proxy_predictor_maps_the_proxy_onto_the_recovered_accuracy():
    """ProxyAccuracy: nothing until 4 plans were evaluated; then a line from the proxy to their accuracy, proxies
    computed once per plan; a proxy that does not rise with the accuracy predicts the mean; None stays None."""
    from host.search.surrogate import ProxyAccuracy

    calls = []

    def proxy(c: np.ndarray) -> float | None:
        calls.append(tuple(c))
        return None if c[0] == 9 else 0.1 * float(c.sum())

    evaluated = [(np.array([i, 0]), 0.5 + 0.02 * i) for i in range(3)]
    predictor = ProxyAccuracy(proxy, lambda: list(evaluated))
    assert predictor.update() is False
    evaluated.append((np.array([3, 0]), 0.56))
    assert predictor.update() is True and predictor.fitted_on == 4
    assert predictor.predict(np.array([2, 3])) == pytest.approx(0.6)  # accuracy = 0.5 + 0.2 * proxy
    assert predictor.predict(np.array([9, 0])) is None
    predictor.update()
    assert len(calls) == len(set(calls))  # memoized
    falling = ProxyAccuracy(lambda c: -float(c.sum()), lambda: list(evaluated))
    falling.update()
    assert falling.predict(np.array([0, 0])) == falling.predict(np.array([3, 3])) == pytest.approx(0.53)


def test_screening_evaluates_the_draw_the_predictor_rates_best():
    """Best-of-k screening: before the predictor is ready the policy's proposal passes unchanged; then the proposal
    or one of the k - 1 policy draws, whichever it predicts best (as projected), is chosen."""
    from host.search.surrogate import ProxyAccuracy, Screen

    evaluated: list[tuple[np.ndarray, float]] = []
    good, bad = np.array([0, 0, 2, 2]), np.array([2, 2, 0, 0])
    draws = []

    def draw(n: int) -> list[np.ndarray]:
        draws.append(n)
        return [bad.copy(), good.copy(), bad.copy()][:n]

    def proxy(c: np.ndarray) -> float:  # layers 0 and 1 carry the accuracy
        return 0.9 - 0.2 * float(c[0] + c[1])

    projected = []

    def project(c: np.ndarray) -> np.ndarray:
        projected.append(c)
        return c.copy()

    screen = Screen(ProxyAccuracy(proxy, lambda: list(evaluated)), draw, project, lambda c, accuracy: accuracy, k=4)
    proposal = np.array([2, 0, 0, 2])
    assert screen.choose(proposal) is proposal and draws == [] and screen.screened == 0
    evaluated += [(c, proxy(c) + 0.05) for c in (np.array([i, j, 0, 0]) for i in range(2) for j in range(2))]
    chosen = screen.choose(proposal)
    assert draws == [3] and np.array_equal(chosen, good) and len(projected) == 4
    assert (screen.screened, screen.replaced) == (1, 1)
    assert np.array_equal(screen.choose(good), good) and screen.replaced == 1  # nothing drawn is better


def test_a_screened_search_learns_from_the_plans_it_evaluated(evaluator, monkeypatch):
    """A flops-objective PPO search with best-of-4 screening on the shape-checked net: the budget is kept, the
    adaptive-BN proxy chose on the steps after the first evaluated plans, and what PPO stores is each evaluated plan
    with its log-probability under the proposing policy (screening turns relabelling on)."""
    from host.kinds import Phase
    from host.search.surrogate import Screen

    stored, screens = record_rollouts(monkeypatch), []
    real_choose = Screen.choose

    def spy(self, proposal):
        screens.append(self)
        return real_choose(self, proposal)

    monkeypatch.setattr(Screen, "choose", spy)
    ppo_flops_search(evaluator, budget=10, screen=4)
    journal, space = evaluator.journal, evaluator.space
    assert journal.count(Phase.SEARCH, evaluated_only=True) == 10
    assert screens and screens[-1].screened >= 1
    proxies = list(screens[-1].predictor._memo.values())  # the real scorer's adaptive-BN accuracies
    assert len(proxies) >= 4 and all(p is None or 0.0 <= p <= 1.0 for p in proxies)
    evaluated = {tuple(evaluator.choices_of(r)) for r in journal.candidates(Phase.SEARCH)}
    plans = [tuple(action.reshape(-1)[space.layer_nodes]) for action, _, _ in stored]
    assert len(stored) >= 4 and all(plan in evaluated for plan in plans)
    assert all(got == pytest.approx(want, abs=1e-5) for _, got, want in stored)


def test_screening_keeps_the_plans_it_did_not_evaluate_for_learning():
    """With ``collect``, each screened step keeps the k - 1 plans it judged but did not evaluate, with their predicted
    rewards (a plan that cannot be built: the invalid reward); without it, nothing is kept."""
    from host.search.candidate import INVALID_REWARD
    from host.search.surrogate import ProxyAccuracy, Screen

    good, bad, broken = np.array([0, 0, 2, 2]), np.array([2, 2, 0, 0]), np.array([9, 0, 0, 0])

    def proxy(c: np.ndarray) -> float | None:
        return None if c[0] == 9 else 0.9 - 0.2 * float(c[0] + c[1])

    evaluated = [(c, proxy(c)) for c in (np.array([i, j, 0, 0]) for i in range(2) for j in range(2))]
    for collect in (False, True):
        screen = Screen(ProxyAccuracy(proxy, lambda: list(evaluated)), lambda n: [good.copy(), broken.copy()][:n],
                        lambda c: c.copy(), lambda c, accuracy: accuracy, k=3, collect=collect)
        assert np.array_equal(screen.choose(bad.copy()), good)
        if not collect:
            assert screen.pending == []
            continue
        kept = {tuple(c): r for c, r in screen.pending}
        assert kept == {tuple(bad): pytest.approx(proxy(bad)), tuple(broken): INVALID_REWARD}


def test_training_on_screened_plans_moves_the_policy_towards_the_better_ones(tmp_path):
    """train_on_plans: one PPO update on given plans and rewards raises the log-probability of the rewarded plan
    against the other, trains on exactly those plans, and leaves PPO's step counter and real rollout alone."""
    from host.search.config import PPOSettings
    from host.search.env import PruningEnv
    from host.search.ppo import ppo_model, train_on_plans
    from tests.unit.host.search.nets import checked_space

    space, _ = checked_space()
    env = PruningEnv(space.observation(), lambda c: None)
    model = ppo_model(env, space, PPOSettings(n_steps=2, batch_size=2, n_epochs=4, hidden=16), 0.0, 0,
                      tmp_path / "ppo.zip")
    model.learn(total_timesteps=0)  # what a search does first (SB3 sets up its learning state), no step taken
    obs, _ = model.policy.obs_to_tensor(env.reset()[0])
    valid = [k for k in range(space.num_choices) if k != space.keep_index]
    good, bad = space.dense_choices(), space.dense_choices()
    good[-1] = valid[0]
    bad[0] = valid[0]

    def log_prob(plan: np.ndarray) -> float:
        action = np.zeros((1, *model.action_space.shape), np.int64)
        action[0, space.layer_nodes] = plan
        with torch.no_grad():
            return float(model.policy.evaluate_actions(obs, torch.as_tensor(action))[1])

    before = log_prob(good) - log_prob(bad)
    steps, buffer = model.num_timesteps, model.rollout_buffer
    rewards = train_on_plans(model, space.observation(), [(good, 1.0), (bad, 0.0)] * 8)
    assert list(rewards) == [1.0, 0.0] * 8
    assert log_prob(good) - log_prob(bad) > before + 0.1
    assert model.num_timesteps == steps and model.rollout_buffer is buffer


def test_a_search_that_learns_from_screened_plans_keeps_its_budget(evaluator, monkeypatch):
    """A flops-objective PPO search with best-of-4 screening and ``screen_learn``: before real rollouts PPO trains
    on the screened plans that were not evaluated (none reaches the journal or PPO's step counter), and the budget
    of evaluated candidates is kept."""
    from host.kinds import Phase
    from host.search.surrogate import Screen

    learned = []
    real_learn = Screen.learn

    def spy(self, model, observation):
        before, steps, pending = _policy_vector(model), model.num_timesteps, len(self.pending)
        done = real_learn(self, model, observation)
        assert model.num_timesteps == steps and self.pending == []
        learned.append((done, pending, bool((before != _policy_vector(model)).any())))
        return done

    monkeypatch.setattr(Screen, "learn", spy)
    ppo_flops_search(evaluator, budget=10, screen=4, screen_learn=True)
    journal = evaluator.journal
    assert journal.count(Phase.SEARCH, evaluated_only=True) == 10
    assert len(journal.candidates(Phase.SEARCH)) <= 30
    assert any(done for done, _, _ in learned)
    assert all(pending >= 3 and moved for done, pending, moved in learned if done)


def test_a_search_that_replays_its_evaluated_plans_keeps_its_budget(evaluator, monkeypatch):
    """``replay``: before real rollouts PPO trains on every plan the run has evaluated so far (the journal's, with
    their real rewards); the policy moves, PPO's step counter and the budget of evaluated candidates do not."""
    from host.kinds import Phase
    from host.search.runner import SearchRunner

    replays = []
    real_replay = SearchRunner._replay

    def spy(self, model, evaluator, space):
        before, steps = _policy_vector(model), model.num_timesteps
        evaluated = len([r for r in self.journal.candidates(Phase.SEARCH) if not r.reused])
        trained = real_replay(self, model, evaluator, space)
        assert model.num_timesteps == steps
        replays.append((trained, evaluated, bool((before != _policy_vector(model)).any())))
        return trained

    monkeypatch.setattr(SearchRunner, "_replay", spy)
    ppo_flops_search(evaluator, budget=10, replay=True)
    assert evaluator.journal.count(Phase.SEARCH, evaluated_only=True) == 10
    assert len(replays) >= 2 and all(trained == evaluated for trained, evaluated, _ in replays if trained)
    assert all(moved for trained, _, moved in replays if trained)
    assert [e for _, e, _ in replays] == sorted(e for _, e, _ in replays) and replays[-1][0] >= 6


def test_replay_skips_a_journaled_plan_whose_choice_the_space_no_longer_offers(evaluator, monkeypatch):
    """A run journaled by an earlier version may hold a choice its space now masks (an int8 run's exact kernel mixes):
    replaying it would train on a log-probability of -inf, so it is left out; the other plans are replayed."""
    from host.search import ppo
    from host.search.config import SearchConfig
    from host.search.journal import CandidatePlan, CandidateRecord
    from host.search.runner import SearchRunner

    space = evaluator.space
    masked = [(i, k) for i in range(len(space.layer_names)) for k in range(space.num_choices)
              if not space.choice_mask[i, k]]
    assert masked
    layer, choice = masked[0]
    dense = {name: space.vocab[space.keep_index] for name in space.layer_names}
    for i, names in enumerate([dense, {**dense, space.layer_names[layer]: space.vocab[choice]}, dense]):
        evaluator.journal.record(CandidateRecord(phase="search", plan=CandidatePlan(choices=names), accuracy=0.9,
                                                 macs=1, params=1, reward=0.5 + i, eval_seconds=0.0))
    trained = []
    monkeypatch.setattr(ppo, "train_on_plans", lambda model, obs, plans, **_: trained.append(plans) or np.zeros(1))
    runner = SearchRunner(SearchConfig(out=evaluator.journal.path.parent, objective="flops", devices=()),
                          evaluator.journal)
    assert runner._replay(None, evaluator, space) == 2
    assert [reward for _, reward in trained[0]] == [0.5, 2.5]


def test_a_proxy_warmup_moves_the_policy_before_any_budget_is_spent(evaluator, monkeypatch):
    """A flops-objective PPO search with ``proxy_plans``: before the first real rollout PPO trains on that many plans
    drawn from its policy and rewarded by the real scorer's adaptive-BN proxy; none reaches the journal or PPO's step
    counter, the budget of evaluated candidates is kept, and the journal records that the warm-up is done."""
    from host.kinds import Phase
    from host.search.runner import PROXY_ROLLOUT, SearchRunner

    seen = []
    real_warmup = SearchRunner._proxy_warmup

    def spy(self, evaluator_, space, band, model):
        before, steps = _policy_vector(model), model.num_timesteps
        rows = len(self.journal.candidates(Phase.SEARCH))
        means = real_warmup(self, evaluator_, space, band, model)
        assert model.num_timesteps == steps and len(self.journal.candidates(Phase.SEARCH)) == rows
        seen.append((means, bool((before != _policy_vector(model)).any())))
        return means

    monkeypatch.setattr(SearchRunner, "_proxy_warmup", spy)
    ppo_flops_search(evaluator, budget=6, proxy_plans=2 * PROXY_ROLLOUT)
    (means, moved), = seen
    assert len(means) == 2 and moved
    assert evaluator.journal.count(Phase.SEARCH, evaluated_only=True) == 6
    assert evaluator.journal.get_value("proxy_warmup_done") is True
    assert evaluator.journal.get_value("proxy_warmup_rewards") == pytest.approx(means)
    # continued with a larger budget (as --resume --budget does), the run does not warm up again
    ppo_flops_search(evaluator, budget=8, proxy_plans=2 * PROXY_ROLLOUT)
    assert len(seen) == 1 and evaluator.journal.count(Phase.SEARCH, evaluated_only=True) == 8


@pytest.mark.parametrize("width", [1, 2], ids=["one-env", "batched-env"])
def test_the_proxy_warmup_learns_what_the_proxy_rewards(evaluator, monkeypatch, width):
    """The warm-up moves the policy towards the plans the proxy rates best: a proxy that pays only for keeping the
    first layer raises the policy's probability of keeping it. Also with the batched environment a search uses when
    it evaluates several plans at once (``--ray``, a pool of boards)."""
    from host.search.config import PPOSettings, SearchConfig
    from host.search.env import BatchedPruningEnv, PruningEnv
    from host.search.ppo import ppo_model
    from host.search.projection import TargetBand
    from host.search.reward import FLOPS_BAND
    from host.search.runner import SearchRunner

    space = evaluator.space
    first = space.layer_names[0]
    monkeypatch.setattr(evaluator.scorer, "proxy_accuracy", lambda plan: 0.2 if plan.get(first) else 0.9)
    evaluator.evaluate_dense()
    config = SearchConfig(out=evaluator.journal.path.parent, objective="flops", devices=(), budget=4,
                          ppo=PPOSettings(n_steps=2, batch_size=2, hidden=16, proxy_plans=96))
    shown = []
    runner = SearchRunner(config, evaluator.journal, progress=shown.append)
    env = PruningEnv(space.observation(), lambda _choices: None) if width == 1 else \
        BatchedPruningEnv(space.observation(), width, lambda _batch: None)
    model = ppo_model(env, space, config.ppo, 0.0, 0, evaluator.journal.path.parent / "ppo.zip")
    assert model.n_envs == width
    padded, _ = PruningEnv(space.observation(), lambda _choices: None).reset()

    def keep_first() -> float:
        obs, _ = model.policy.obs_to_tensor(padded)
        with torch.no_grad():
            distribution = model.policy.get_distribution(obs).distribution
        return float(distribution[int(space.layer_nodes[0])].probs.reshape(-1)[space.keep_index])

    before = keep_first()
    # the band a FLOPs search projects into (0.5 MAC cut): plans outside it are paid ``accuracy - 1`` whatever
    runner._proxy_warmup(evaluator, space, TargetBand(0.5, FLOPS_BAND, exact=True), model)
    assert keep_first() > before + 0.1
    # a progress line per update, counting plans up to the total
    assert [(p.stage, p.done, p.total) for p in shown] == [("warm-up", 16 * (i + 1), 96) for i in range(6)]

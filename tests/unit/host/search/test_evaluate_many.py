"""Several candidates at once (``CandidateEvaluator.evaluate_many``): results that arrive out of order are
journaled as they arrive, once each, and come back in the order of the batch; a plan twice in one batch is
scored once; a lost task is journaled as invalid and the batch goes on."""

from __future__ import annotations

from host.cluster import InlineExecutor, TaskLost
from host.search.candidate import INVALID_REWARD, candidate_plan
from tests.unit.host.search.nets import choices


class ReversedExecutor:
    """An executor that runs every task here, but hands results back last submitted first (as a cluster may),
    with room for two at once; ``lose`` names the submission indices whose task comes back lost."""

    parallelism = 2

    def __init__(self, lose=()):
        self.inline, self.calls, self.lose = InlineExecutor(), [], set(lose)

    def share(self, obj):
        return obj

    def submit(self, fn, *args):
        self.calls.append(fn.__name__)
        done = self.inline.submit(fn, *args)
        if len(self.calls) - 1 in self.lose:
            done.value = TaskLost("worker died", hint="")
        return done

    def next_done(self, handles, timeout=None):
        return handles[-1], handles[-1].value


def test_out_of_order_results_are_journaled_once_and_returned_in_batch_order(evaluator):
    evaluator.evaluate_dense()
    space = evaluator.space
    batch = [choices(space, stem="kernel:row2"), choices(space, left="kernel:row1"), choices(space, stem="kernel:row2"),
             choices(space, stem="channel:prune50")]
    seen = []
    ex = ReversedExecutor()
    records = evaluator.evaluate_many(batch, executor=ex, on_record=seen.append)
    # the duplicate plan is scored once; the three distinct plans were submitted together
    assert ex.calls == ["score_plan"] * 3
    assert [r.plan.choices for r in records] == [candidate_plan(space, c).choices for c in batch]
    assert records[2].reused and records[2].accuracy == records[0].accuracy and not records[0].reused
    # journaled as they arrived: the last submitted first
    assert [r.id for r in seen[:3]] == sorted(r.id for r in seen[:3])
    assert seen[0].plan.choices == candidate_plan(space, batch[3]).choices
    rows = evaluator.journal.candidates("search")
    # where each evaluated candidate's time went is journaled (this objective measures nothing)
    assert all(set(r.stage_seconds) == {"score"} and r.stage_seconds["score"] > 0 for r in rows if not r.reused)
    assert evaluator.journal.count("search", evaluated_only=True) == 3 and len(rows) == 4
    # the same answers as one at a time
    single = evaluator.evaluate(batch[1])
    assert single.reused and single.accuracy == records[1].accuracy


def test_a_lost_task_is_journaled_invalid_and_the_batch_goes_on(evaluator):
    evaluator.evaluate_dense()
    space = evaluator.space
    batch = [choices(space, stem="kernel:row2"), choices(space, left="kernel:row1")]
    records = evaluator.evaluate_many(batch, executor=ReversedExecutor(lose={0}))
    assert not records[0].valid and records[0].reward == INVALID_REWARD
    assert records[0].reason.startswith("cluster failed: worker died")
    assert records[1].valid and records[1].accuracy > 0

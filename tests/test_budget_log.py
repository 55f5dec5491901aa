"""The time-budget log is thinned (issue 24, point 5): a re-plan is said only when the plan moved by
more than 10 % (and more than one epoch) from the plan the log said last, or when it decides the last
epoch; every re-plan stays in ``replans`` (budget.json). Pure functions: no training."""

from medclass.engine.budget import REPLAN_NOTE_FRACTION, Budget, replan_note


def test_fraction_is_ten_percent():
    assert REPLAN_NOTE_FRACTION == 0.1


def test_no_change_and_stop_are_not_said():
    assert replan_note(51, 51, 51, 10, "r") is None
    assert replan_note(51, 51, 10, 10, "no epoch fits") is None  # a stop: stop_reason is logged instead
    assert replan_note(51, 51, 9, 10) is None


def test_small_swings_are_not_said():
    # 51 -> 47 is 7.8 % of the plan said (51): noise, not said; nor the swing back
    assert replan_note(51, 51, 47, 10, "slower") is None
    assert replan_note(51, 47, 51, 11, "faster") is None
    assert replan_note(51, 51, 56, 10) is None  # 5 epochs: not more than 5.1
    # one epoch is never enough, even when it is more than 10 % of a short plan
    assert replan_note(5, 5, 6, 2) is None
    assert replan_note(5, 5, 4, 2) is None


def test_large_changes_are_said_from_the_plan_said_last():
    assert replan_note(51, 51, 57, 10, "faster") == "time budget: re-planned from 51 to 57 epochs (faster)"
    # the plan drifted unsaid 51 -> 47 -> 45: the line gives the change since the log's 51
    assert replan_note(51, 47, 45, 12, "slower") == "time budget: re-planned from 51 to 45 epochs (slower)"
    assert replan_note(5, 5, 7, 2) == "time budget: re-planned from 5 to 7 epochs"


def test_the_last_epoch_decided_is_said():
    assert replan_note(51, 47, 46, 45, "epoch 46 is the last") == (
        "time budget: re-planned from 51 to 46 epochs (epoch 46 is the last)")
    assert replan_note(47, 48, 47, 46, "epoch 47 is the last") == (
        "time budget: the plan of 47 epochs holds (epoch 47 is the last)")
    # while an epoch runs: it becomes the last (epochs_done = during_epoch - 1)
    assert replan_note(47, 47, 30, 29, "slow", during_epoch=30) == (
        "time budget: re-planned from 47 to 30 epochs during epoch 30 (slow)")


def _budget(planned: int) -> Budget:
    return Budget(seconds=600.0, start=0.0, planned_epochs=planned, clock=lambda: 0.0)


def test_budget_says_a_swinging_plan_once():
    """The 10-minute run of issue 24: the plan swung between 51 and 47 about 20 times and the log
    said every swing; now it says none of them, then the last epoch."""
    b = _budget(51)
    lines = []
    plan = 51
    for done in range(1, 41):
        new = 47 if plan == 51 else 51
        b.replans.append({"after_epoch": done, "from": plan, "to": new, "reason": "swing"})
        b.planned_epochs = new
        lines.append(b.replan_log_line(plan, new, done))
        plan = new
    assert lines == [None] * 40
    assert len(b.replans) == 40  # every re-plan is still recorded
    b.replans.append({"after_epoch": 45, "from": plan, "to": 46, "reason": "epoch 46 is the last"})
    assert b.replan_log_line(plan, 46, 45) == "time budget: re-planned from 51 to 46 epochs (epoch 46 is the last)"
    assert b.reported_epochs == 46


def test_budget_remembers_the_plan_said():
    b = _budget(100)
    b.replans.append({"reason": "slower"})
    assert b.replan_log_line(100, 95, 5) is None
    assert b.reported_epochs == 100  # the first plan, not the unsaid 95
    assert b.replan_log_line(95, 91, 6) is None
    assert b.replan_log_line(91, 89, 7) == "time budget: re-planned from 100 to 89 epochs (slower)"
    assert b.reported_epochs == 89
    assert b.replan_log_line(89, 81, 8) is None  # 8 of 89: under 10 %
    assert b.replan_log_line(81, 78, 9) == "time budget: re-planned from 89 to 78 epochs (slower)"
    # during an epoch, the epoch running becomes the last: always said
    assert b.replan_log_line(78, 10, 9, during_epoch=10) == (
        "time budget: re-planned from 78 to 10 epochs during epoch 10 (slower)")


def test_budget_without_replans_has_no_reason():
    b = _budget(20)
    assert b.replan_log_line(20, 30, 3) == "time budget: re-planned from 20 to 30 epochs"

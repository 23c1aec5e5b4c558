"""``fastbp train --schedule ...`` (issue 15): the CLI's learning-rate schedules."""
from __future__ import annotations

import pytest

pytest.importorskip("sklearn")

import fastbp  # noqa: E402
from fastbp import cli  # noqa: E402
from fastbp import schedules as S  # noqa: E402


@pytest.fixture
def steps(monkeypatch):
    made = []
    real = fastbp.compile

    def spy(*a, **kw):
        made.append(real(*a, **kw))
        return made[-1]
    monkeypatch.setattr(fastbp, "compile", spy)
    return made


@pytest.mark.parametrize("argv,want", [
    (["--schedule", "cosine", "--warmup", "1"], S.CosineAnnealingLR(T_max=2, warmup=1)),
    (["--schedule", "step", "--step-size", "2", "--gamma", "0.5"], S.StepLR(2, gamma=0.5)),
    (["--schedule", "multistep", "--milestones", "1", "2"], S.MultiStepLR([1, 2])),
    (["--schedule", "exponential"], S.ExponentialLR(0.95)),
])
def test_train_follows_the_schedule(steps, capsys, argv, want):
    rc = cli.main(["train", "--quiet", "--epochs", "3", "--hidden", "8", "--optimizer", "sgd", "--lr", "0.1",
                   *argv])
    assert rc == 0, capsys.readouterr().err
    step = steps[-1]
    assert step.schedule == want and step.epochs_done == 3
    assert step.lr == pytest.approx(want.lr_at(3, 0.1)) and step.optimizer.lr == 0.1


def test_onecycle_and_plateau(steps, capsys):
    assert cli.main(["train", "--quiet", "--epochs", "2", "--hidden", "8", "--schedule", "onecycle",
                     "--lr", "0.05"]) == 0
    s = steps[-1].schedule
    assert isinstance(s, S.OneCycleLR) and s.max_lr == 0.05 and s.total_steps == 2 * -(-1437 // 32)
    assert cli.main(["train", "--quiet", "--epochs", "2", "--hidden", "8", "--schedule", "plateau",
                     "--patience", "0", "--gamma", "0.5"]) == 0
    p = steps[-1].schedule
    assert isinstance(p, S.ReduceLROnPlateau) and p.patience == 0 and p.factor == 0.5 and p.last_epoch == 2


@pytest.mark.parametrize("argv,words", [
    (["--warmup", "2"], "--warmup needs --schedule"),
    (["--schedule", "step", "--warmup", "2"], "--warmup applies to --schedule cosine"),
    (["--schedule", "multistep"], "--milestones"),
    (["--schedule", "plateau", "--gamma", "1"], "--gamma must be < 1"),
])
def test_schedule_usage_errors(capsys, argv, words):
    assert cli.main(["train", "--quiet", "--epochs", "2", *argv]) == 2
    assert words in capsys.readouterr().err


def test_bad_schedule_name_is_a_usage_error(capsys):
    assert cli.main(["train", "--schedule", "linear"]) == 2
    assert "--schedule" in capsys.readouterr().err

"""The training loop: it learns, it resumes exactly, and it refuses what would lose data."""

import json

import pytest
import torch

from simdiff.train import CheckpointError, TrainConfig, train


def _config(**changes):
    base = {"scene": "walker_small", "controller": "sinusoid", "iters": 4, "backend": "warp",
            "lr": 0.05, "scene_options": {"steps": 150}, "checkpoint_every": 2}
    base.update(changes)
    return TrainConfig(**base)


def test_short_training_walks_further_than_untrained(tmp_path):
    result = train(_config(iters=16, controller="mlp", lr=0.03, scene_options={"steps": 300}),
                   tmp_path / "run", progress=False)
    distances = [row["distance"] for row in result.metrics]
    assert len(distances) == 16
    # The first row is the untrained controller's rollout.
    assert max(distances[-3:]) > distances[0] + 0.03
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(16))


def test_resume_continues_exactly(tmp_path):
    full = train(_config(iters=4), tmp_path / "full", progress=False)
    part = train(_config(iters=2), tmp_path / "part", progress=False)
    resumed = train(_config(iters=4), tmp_path / "part", resume=tmp_path / "part" / "checkpoint.pt",
                    progress=False)
    assert [r["loss"] for r in resumed.metrics] == [r["loss"] for r in full.metrics]
    assert len(part.metrics) == 2
    for a, b in zip(full.controller.state_dict().values(), resumed.controller.state_dict().values()):
        assert torch.equal(a, b)


def test_existing_run_is_not_overwritten(tmp_path):
    train(_config(iters=1), tmp_path / "run", progress=False)
    before = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a training run"):
        train(_config(iters=1), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == before


def test_corrupt_or_mismatched_checkpoints_are_refused(tmp_path):
    train(_config(iters=1), tmp_path / "run", progress=False)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable or corrupt"):
        train(_config(iters=2), tmp_path / "other", resume=bad, progress=False)
    with pytest.raises(CheckpointError, match="belongs to another run: controller='sinusoid' there"):
        train(_config(iters=2, controller="mlp"), tmp_path / "other2",
              resume=tmp_path / "run" / "checkpoint.pt", progress=False)
    train(_config(iters=1), tmp_path / "another", progress=False)
    with pytest.raises(FileExistsError, match="already holds another training run"):
        train(_config(iters=2), tmp_path / "another", resume=tmp_path / "run" / "checkpoint.pt",
              progress=False)
    with pytest.raises(CheckpointError, match="does not exist"):
        train(_config(iters=2), tmp_path / "x", resume=tmp_path / "missing.pt", progress=False)


def test_unknown_optimizer_is_named(tmp_path):
    with pytest.raises(ValueError, match="optimizer='adamm' is unknown; allowed: .*adam"):
        train(_config(optimizer="adamm"), tmp_path / "run", progress=False)


def test_a_scene_with_nothing_to_train_is_refused_before_compiling(tmp_path):
    from simdiff.scene import SceneError

    with pytest.raises(SceneError, match="nothing to train.*simdiff run nbody_pythagorean"):
        train(TrainConfig(scene="nbody_pythagorean", iters=1), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cosine_schedule_anneals_the_rate_and_resumes_exactly(tmp_path):
    from simdiff.train import scheduled_lr

    assert scheduled_lr(0.1, "cosine", 0, 5) == pytest.approx(0.1)
    assert scheduled_lr(0.1, "cosine", 2, 5) == pytest.approx(0.1 * (0.05 + 0.95 * 0.5))
    assert scheduled_lr(0.1, "cosine", 4, 5) == pytest.approx(0.005)
    assert scheduled_lr(0.1, "constant", 4, 5) == 0.1
    full = train(_config(lr_schedule="cosine"), tmp_path / "full", progress=False)
    assert [r["lr"] for r in full.metrics] == pytest.approx(
        [scheduled_lr(0.05, "cosine", i, 4) for i in range(4)])
    # The schedule runs over the run's total: a 2-iteration run continued to 4 takes the
    # 4-iteration schedule's rates from there on.
    train(_config(iters=2, lr_schedule="cosine"), tmp_path / "part", progress=False)
    resumed = train(_config(lr_schedule="cosine"), tmp_path / "part",
                    resume=tmp_path / "part" / "checkpoint.pt", progress=False)
    assert [r["lr"] for r in resumed.metrics] == pytest.approx(
        [scheduled_lr(0.05, "cosine", i, 2) for i in range(2)]
        + [scheduled_lr(0.05, "cosine", i, 4) for i in range(2, 4)])
    with pytest.raises(CheckpointError, match="belongs to another run: lr_schedule='cosine'"):
        train(_config(), tmp_path / "part", resume=tmp_path / "part" / "checkpoint.pt",
              progress=False)
    with pytest.raises(ValueError, match="lr_schedule='linear' is unknown; allowed: constant, "
                                         "cosine"):
        train(_config(lr_schedule="linear"), tmp_path / "bad", progress=False)

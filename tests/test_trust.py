"""Trust: data files never run code, output folders take one writer, refused actions lose
nothing, bad input is one line with exit code 2, and RL training resumes exactly."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from simdiff.cli import main
from simdiff.files import LOCK_NAME, DataFileError, hold_lock, load_data

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


class _Payload:
    """Unpickling this creates the folder ``marker``: the code a crafted file would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _payload_file(path: Path, marker: Path, **fields) -> Path:
    torch.save({"format": 1, "config": {}, **fields, "payload": _Payload(marker)}, path)
    return path


def test_the_payload_is_live_when_unpickled(tmp_path):
    """The refusal tests below mean something: unpickled, the payload does run."""
    marker = tmp_path / "ran"
    path = _payload_file(tmp_path / "p.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.is_dir()


@pytest.mark.parametrize("command", ["train --resume", "run --weights", "rl eval",
                                     "rl train --resume", "load_data"])
def test_a_payload_file_is_refused_and_its_code_never_runs(tmp_path, capsys, command):
    marker = tmp_path / "ran"
    out = tmp_path / "out"
    if command == "load_data":
        with pytest.raises(DataFileError, match=r"need unpickling \(os.makedirs\)"):
            load_data(_payload_file(tmp_path / "p.pt", marker))
        assert not marker.exists()
        return
    if command == "train --resume":
        argv = ["train", "walker_small", "--steps", "5", "--iters", "1", "--quiet", "--no-video",
                "--out", str(out), "--resume", str(_payload_file(tmp_path / "c.pt", marker))]
    elif command == "run --weights":
        argv = ["run", "walker_small", "--controller", "sinusoid", "--steps", "5", "--out",
                str(tmp_path / "v"), "--weights",
                str(_payload_file(tmp_path / "w.pt", marker))]
    elif command == "rl eval":
        argv = ["rl", "eval", str(_payload_file(tmp_path / "policy.pt", marker, policy={})),
                "--out", str(out)]
    else:
        out.mkdir()
        _payload_file(out / "policy.checkpoint.pt", marker)
        argv = ["rl", "train", "--steps", "10", "--out", str(out), "--resume"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "need unpickling (os.makedirs)" in err and "refused" in err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_a_stable_baselines3_zip_is_refused_with_the_way_to_convert_it(tmp_path, capsys):
    (tmp_path / "old.zip").write_bytes(b"PK")
    assert main(["rl", "eval", str(tmp_path / "old.zip"), "--out", str(tmp_path / "e")]) == 2
    assert "loads by unpickling" in capsys.readouterr().err


def test_the_converted_shipped_policy_acts_as_the_zip_did():
    """Actions and probabilities recorded from the stable-baselines3 zip before conversion."""
    from simdiff.rl.policy import features, load_policy

    ref = json.loads((ROOT / "tests" / "data" / "shipped_policy_reference.json").read_text())
    policy = load_policy()
    obs = np.array(ref["observations"])
    assert policy.act(obs).tolist() == ref["actions"]
    inputs = torch.as_tensor(features(obs, policy.meta["features"], policy.settings["interval"]))
    with torch.no_grad():
        probs = policy.model.get_distribution(inputs).distribution.probs.numpy()
    assert np.abs(probs - np.array(ref["probabilities"])).max() < 1e-6


def _hold_in_another_process(folder: Path, lock_name: str = LOCK_NAME) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import sys, time
        from simdiff.files import hold_lock
        with hold_lock({str(folder)!r}, lock_name={lock_name!r}):
            print("locked", flush=True)
            time.sleep(120)
    """)
    holder = subprocess.Popen([PYTHON, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.parametrize("command", ["train", "run", "design", "design robot", "rl train",
                                     "sweep"])
def test_a_folder_another_process_writes_into_is_refused(tmp_path, capsys, command):
    out = tmp_path / "out"
    lock_name = LOCK_NAME
    if command == "run":
        argv = ["run", "walker_small", "--steps", "5", "--backend", "warp", "--out", str(out)]
    elif command == "train":
        argv = ["train", "walker_small", "--steps", "5", "--iters", "1", "--out", str(out)]
    elif command == "design":
        argv = ["design", "mbb_beam", "--iters", "2", "--out", str(out), "--quiet"]
    elif command == "design robot":
        argv = ["design", "robot", "--iters", "1", "--out", str(out), "--quiet"]
    elif command == "rl train":
        argv, lock_name = ["rl", "train", "--steps", "8", "--out", str(out)], "policy.lock"
    else:
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps({"command": "train", "out": str(out),
                                    "fixed": {"scene": "walker_small", "iters": 1}}))
        argv = ["sweep", str(spec), "--quiet"]
    holder = _hold_in_another_process(out, lock_name)
    try:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"in use by another simdiff process (pid {holder.pid})" in err
        assert sorted(p.name for p in out.iterdir()) == [lock_name]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    with hold_lock(out, lock_name=lock_name):  # killed (-9): its lock went with it
        pass


@pytest.mark.parametrize("command", ["train", "run", "design", "rl train", "sweep"])
def test_a_lock_left_by_a_killed_run_is_taken_over_and_a_clean_exit_removes_it(tmp_path,
                                                                              command):
    """A run killed (-9) before it wrote anything leaves only its lock file, with its pid: a
    fresh run into that folder is accepted (the file holds no lock and counts as no output),
    and its clean exit leaves no lock file behind (the sweep's runs neither)."""
    out = tmp_path / "out"
    lock_name = "policy.lock" if command == "rl train" else LOCK_NAME
    holder = _hold_in_another_process(out, lock_name)
    holder.kill()
    holder.wait()
    assert sorted(p.name for p in out.iterdir()) == [lock_name]
    assert (out / lock_name).read_text() == f"pid {holder.pid}\n"
    small = ["walker_small", "--steps", "5", "--backend", "warp", "--quiet"]
    if command == "rl train":
        from simdiff.rl.policy import train_policy

        train_policy(out / "policy", steps=16, envs=1, rollout_steps=16, checkpoint_every=16,
                     settings={"max_actions": 4}, progress=False)
        assert (out / "policy.pt").is_file()
    elif command == "sweep":
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps({"command": "train", "out": str(out), "fixed": {
            "scene": "walker_small", "steps": 5, "iters": 1, "backend": "warp",
            "no_video": True}}))
        assert main(["sweep", str(spec), "--quiet", "--workers", "1"]) == 0
        assert (out / "sweep.json").is_file()
    else:
        argv = {"train": ["train", *small, "--iters", "1", "--no-video"], "run": ["run", *small],
                "design": ["design", "mbb_beam", "--iters", "2", "--quiet"]}[command]
        assert main([*argv, "--out", str(out)]) == 0
    assert list(out.rglob("*.lock")) == []


def test_a_run_refused_inside_its_lock_leaves_no_folder(tmp_path):
    out = tmp_path / "new" / "run"
    assert main(["train", "walker_small", "--backend", "warp", "--steps", "1000000000000",
                 "--rollout-checkpoint", "1000000", "--out", str(out)]) == 2
    assert not (tmp_path / "new" / "run").exists()


def test_two_trainings_into_one_folder_the_second_refused(tmp_path):
    out = tmp_path / "run"
    argv = [PYTHON, "-m", "simdiff.cli", "train", "walker_small", "--steps", "40", "--iters",
            "3", "--backend", "warp", "--quiet", "--no-video", "--out", str(out)]
    first = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        lock = out / LOCK_NAME
        while first.poll() is None and not (lock.exists() and lock.read_text().strip()):
            pass
        second = subprocess.run(argv, env=ENV, capture_output=True, text=True, check=False)
    finally:
        _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    assert second.returncode == 2, second.stderr
    assert ("in use by another simdiff process" in second.stderr
            or "already holds a training run" in second.stderr)
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["iteration"] for r in rows] == [0, 1, 2]


_TRAIN = ["train", "walker_small", "--controller", "sinusoid", "--backend", "warp", "--steps",
          "30", "--quiet", "--no-video"]


def test_resume_keeps_or_refuses_lr_and_seed(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_TRAIN + ["--iters", "1", "--lr", "0.05", "--seed", "3", "--out", str(out)]) == 0
    checkpoint = str(out / "checkpoint.pt")
    for changed, text in ((["--lr", "0.1"], "lr=0.05; resuming with lr=0.1 is refused"),
                          (["--seed", "4"], "seed=3; resuming with seed=4 is refused")):
        assert main(_TRAIN + ["--iters", "2", "--out", str(out), "--resume", checkpoint]
                    + changed) == 2
        assert text in capsys.readouterr().err
    assert main(_TRAIN + ["--iters", "2", "--out", str(out), "--resume", checkpoint]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == 0.05 and config["seed"] == 3


def test_a_run_failing_in_its_first_iteration_can_be_resumed_or_replaced(tmp_path, capsys):
    """A controller that fails while a marker file exists: the first iteration dies."""
    trap = tmp_path / "trap"
    controller = tmp_path / "fragile.py"
    controller.write_text(textwrap.dedent(f"""
        import os, torch

        class Fragile(torch.nn.Module):
            def __init__(self, n):
                super().__init__()
                self.w = torch.nn.Parameter(torch.zeros(n))

            def forward(self, step, state):
                if os.path.exists({str(trap)!r}):
                    raise RuntimeError("trapped")
                action = torch.sin(self.w + 0.1 * step)
                batched = state.particle_x.dim() == 3  # [B, n, dim] once worlds are batched
                return action.expand(state.particle_x.shape[0], -1) if batched else action

        def controller(sim, scene):
            return Fragile(sim.action_dim)
    """))
    argv = ["train", "walker_small", "--controller", str(controller), "--backend", "warp",
            "--steps", "20", "--iters", "1", "--quiet", "--no-video"]
    trap.touch()
    for name in ("a", "b"):
        with pytest.raises(RuntimeError, match="trapped"):
            main(argv + ["--out", str(tmp_path / name)])
    trap.unlink()
    assert main(argv + ["--out", str(tmp_path / "a"), "--resume",
                        str(tmp_path / "a" / "checkpoint.pt")]) == 0
    assert main(argv + ["--out", str(tmp_path / "b")]) == 0  # a fresh run replaces nothing
    for name in ("a", "b"):
        assert len((tmp_path / name / "metrics.jsonl").read_text().splitlines()) == 1


def test_design_into_a_training_run_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_TRAIN + ["--iters", "1", "--out", str(out)]) == 0
    before = (out / "metrics.jsonl").read_bytes()
    assert main(["design", "mbb_beam", "--iters", "2", "--out", str(out), "--quiet"]) == 2
    assert "holds a training run" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_bytes() == before


def test_a_sweep_spec_may_not_share_one_out_between_runs(tmp_path):
    from simdiff.sweep.spec import SpecError, parse_spec

    base = {"command": "train", "out": str(tmp_path / "s"), "fixed": {"scene": "walker_small"}}
    for where, value in (("fixed", {"out": "shared"}), ("grid", {"out": ["a", "b"]})):
        with pytest.raises(SpecError, match="sets 'out'"):
            parse_spec({**base, where: {**base.get(where, {}), **value}})
    parse_spec({**base, "fixed": {"scene": "walker_small", "out": "{run_dir}/inner"}})


_SATURATING = """
import torch

class Saturated(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(n))

    def forward(self, step, state):
        action = torch.tanh(1e6 * self.w)  # saturated: the gradient is exactly zero
        batched = state.particle_x.dim() == 3  # [B, n, dim] once worlds are batched
        return action.expand(state.particle_x.shape[0], -1) if batched else action

def controller(sim, scene):
    return Saturated(sim.action_dim)
"""


def test_a_saturated_controller_is_warned_about(tmp_path, capsys):
    path = tmp_path / "saturated.py"
    path.write_text(_SATURATING)
    assert main(["train", "walker_small", "--controller", str(path), "--backend", "warp",
                 "--steps", "10", "--iters", "4", "--quiet", "--no-video", "--out",
                 str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "gradient has been exactly 0 for 3 iterations" in err and "smaller --lr" in err


# Each bad input: the arguments, and a fragment of the one line it must give.
_ONE_LINE = [
    (["train", "walker_small", "--set", "frction=0.5"],
     "scene 'walker_small' has no option 'frction'; its options: actuation,"),
    (["train", "walker_small", "--set", "friction"], "expected KEY=VALUE"),
    (["train", "walker_small", "--optimizer", "bogus"], "optimizer='bogus' is unknown"),
    (["train", "walker_small", "--lr", "nan"], "lr=nan must be a finite number > 0"),
    (["train", "walker_small", "--rollout-checkpoint", "0"], "rollout_checkpoint=0 must be"),
    (["train", "mpm_crawler", "--set", "grid_size=0"], "grid_size=0 must be a positive integer"),
    (["run", "nbody_plummer", "--set", "n=0"], "n=0 must be at least 2"),
    (["design", "robot", "--iters", "0"], "iters=0 must be an integer >= 1"),
    (["design", "robot", "--volfrac", "1.5"], "volfrac=1.5 must lie strictly between 0 and 1"),
    (["train", "walker_small", "--resume", "{tmp}/noconfig.pt"], "lacks config"),
    (["train", "walker_small", "--out", "{tmp}/file/sub"], "--out {tmp}/file/sub cannot be"),
    (["gradcheck", "walker_small", "--steps", "0"], "--steps 0 must be >= 1"),
    (["train", "walker_small", "--backend", "warp", "--steps", "1000000000000"],
     "steps=1000000000000: the rollout would keep at least"),
    (["train", "walker_small", "--backend", "warp", "--steps", "1000000000000",
      "--rollout-checkpoint", "1000000"],
     "steps=1000000000000: one rollout (forward and backward) would take at least 34.7 days"),
    (["run", "walker_small", "--backend", "warp", "--steps", "1000000000000", "--out",
      "{tmp}/r"], "steps=1000000000000: the rollout would keep at least"),
    (["gradcheck", "walker_small", "--backend", "warp", "--steps", "1000000000000"],
     "available; use fewer steps, or --force"),
    (["rl", "train", "--checkpoint-every", "0", "--out", "{tmp}/p"], "checkpoint_every=0"),
    (["gradcheck", "mpm_jelly_3d", "--backend", "taichi", "--steps", "1"],
     "MPM gradients in 3D are not available on taichi; use --backend warp"),
]


@pytest.mark.parametrize("argv, message", _ONE_LINE, ids=[" ".join(a[:4]) for a, _ in _ONE_LINE])
def test_bad_input_is_one_line_with_exit_code_2(tmp_path, capsys, argv, message):
    (tmp_path / "file").write_text("")
    torch.save({"format": 1, "iteration": 0}, tmp_path / "noconfig.pt")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] in ("train", "design") and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message.replace("{tmp}", str(tmp_path)) in err
    assert len(err.strip().splitlines()) == 1, err


def test_absurd_steps_run_with_force_are_not_refused_by_the_estimate(tmp_path):
    """--force skips the refusal (checked on the estimate itself, not by running it)."""
    from simdiff.backend import resolve_backend
    from simdiff.scene import load_scene, make_simulator
    from simdiff.train import check_rollout_size

    sim = make_simulator(load_scene("walker_small"), resolve_backend("warp"))
    small = check_rollout_size(sim, 100, backward=True)
    assert check_rollout_size(sim, 100, backward=True, rollout_checkpoint=10) < small
    assert check_rollout_size(sim, 10**12, backward=True, force=True) == small * 10**10
    with pytest.raises(ValueError, match="--rollout-checkpoint K, fewer steps, or --force"):
        check_rollout_size(sim, 10**12, backward=True)


def test_a_horizon_too_long_to_finish_is_refused_on_its_measured_time():
    """Past TIMED_ABOVE_STEPS the step is timed: 200,000 steps pass the floor's bound (1 us a
    step: 0.2 s) of a 0.5 s limit, and are refused on the measured cost (a walker step takes
    far more than 2.5 us) with that estimate in one line. At the threshold nothing is timed,
    and force skips both."""
    from simdiff.backend import resolve_backend
    from simdiff.scene import load_scene, make_simulator
    from simdiff.train import TIMED_ABOVE_STEPS, check_rollout_size

    sim = make_simulator(load_scene("walker_small"), resolve_backend("warp"))
    steps = 10 * TIMED_ABOVE_STEPS
    with pytest.raises(ValueError, match=rf"steps={steps}: one rollout \(forward\) would take at "
                                         r"least .* ms a step, measured over 3 steps\), beyond "
                                         r"the limit of 0.5 s; use fewer steps, or --force"):
        check_rollout_size(sim, steps, backward=False, time_limit_s=0.5)
    # Not timed at or below the threshold (the floor is 1 us a step: 20 ms here).
    check_rollout_size(sim, TIMED_ABOVE_STEPS, backward=True, time_limit_s=0.1)
    check_rollout_size(sim, steps, backward=True, rollout_checkpoint=100, time_limit_s=1e-3,
                       force=True)


def test_an_uncaught_error_reads_as_one_line_in_a_subprocess(tmp_path):
    result = subprocess.run([PYTHON, "-m", "simdiff.cli", "train", "walker_small", "--set",
                             "bogus=1", "--out", str(tmp_path / "o")],
                            env=ENV, capture_output=True, text=True, check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "CUDA" not in line]
    assert len(lines) == 1 and "has no option 'bogus'" in lines[0]


_RL = {"envs": 2, "rollout_steps": 32, "checkpoint_every": 64, "settings": {"max_actions": 4},
       "progress": False, "feature_kind": "signed_log_v1", "gamma": 0.99}


def test_rl_resume_is_exact(tmp_path, monkeypatch):
    """Interrupted after its second checkpoint, then resumed: the same weights as a run that
    never stopped (difference exactly 0). No run leaves stable-baselines3's default log folder
    (TMPDIR/SB3-DATE) behind."""
    import tempfile

    import simdiff.rl.policy as rl

    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    full = rl.train_policy(tmp_path / "full", steps=256, **_RL)
    saved = rl.save_data
    calls = []

    def interrupt(obj, path):
        saved(obj, path)
        calls.append(path)
        if str(path).endswith(".checkpoint.pt") and len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(rl, "save_data", interrupt)
    with pytest.raises(KeyboardInterrupt):
        rl.train_policy(tmp_path / "part", steps=256, **_RL)
    monkeypatch.setattr(rl, "save_data", saved)
    assert load_data(tmp_path / "part.checkpoint.pt")["num_timesteps"] == 128
    with pytest.raises(FileExistsError, match="pass --resume to continue it"):
        rl.train_policy(tmp_path / "part", steps=256, **_RL)
    with pytest.raises(Exception, match="belongs to another run: seed=0 there, 1 here"):
        rl.train_policy(tmp_path / "part", steps=256, resume=True, **{**_RL, "seed": 1})
    resumed = rl.train_policy(tmp_path / "part", steps=256, resume=True, **_RL)
    a, b = load_data(full)["policy"], load_data(resumed)["policy"]
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0
    # Finished: not overwritten, and a resume says there is nothing to do.
    with pytest.raises(FileExistsError, match="a trained policy"):
        rl.train_policy(tmp_path / "full", steps=256, **_RL)
    with pytest.raises(FileExistsError, match="finished run .* nothing to resume"):
        rl.train_policy(tmp_path / "full", steps=256, resume=True, **_RL)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_force_evaluations_are_counted_per_rollout():
    """Training repeats rollouts on one simulator: each reports its own count."""
    from simdiff.backend import resolve_backend
    from simdiff.rollout import rollout
    from simdiff.scene import load_scene, make_simulator

    scene = load_scene("nbody_figure_eight", steps=20)
    sim = make_simulator(scene, resolve_backend("warp", precision="float64"))
    counts = []
    for _ in range(3):
        result = rollout(sim, sim.initial_state(), None, scene.steps)
        counts.append(scene.metrics(result)["force_evaluations"])
    assert counts[0] == counts[1] == counts[2] > 20


def test_a_trusted_stable_baselines3_zip_converts_to_the_same_policy(tmp_path, capsys):
    import gymnasium as gym
    from stable_baselines3 import PPO

    from simdiff.rl.policy import FEATURE_SIZES, load_policy

    class Space(gym.Env):
        observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(FEATURE_SIZES["encounter_v2"],))
        action_space = gym.spaces.Discrete(10)

    model = PPO("MlpPolicy", Space(), n_steps=8, batch_size=8, device="cpu", seed=3,
                policy_kwargs={"net_arch": [64, 64]})
    model.save(tmp_path / "old")
    (tmp_path / "old.json").write_text(json.dumps({"features": "encounter_v2"}))
    assert main(["rl", "convert", str(tmp_path / "old.zip")]) == 0
    policy = load_policy(tmp_path / "old")
    obs = np.random.default_rng(0).normal(size=(16, 19))
    from simdiff.rl.policy import features

    expected, _ = model.predict(features(obs, "encounter_v2"), deterministic=True)
    assert policy.act(obs).tolist() == expected.tolist()
    assert main(["rl", "convert", str(tmp_path / "old.zip")]) == 2  # never overwrites
    assert "not overwritten" in capsys.readouterr().err
    # --out is a folder: the weights and their settings (NAME.json) go there together, and
    # `rl eval` is given the weights file the folder holds.
    assert main(["rl", "convert", str(tmp_path / "old.zip"), "--out", str(tmp_path / "c")]) == 0
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["old.json", "old.pt"]
    assert load_policy(tmp_path / "c" / "old").act(obs).tolist() == expected.tolist()


def test_a_controller_of_the_wrong_action_shape_is_one_line(tmp_path, capsys):
    path = tmp_path / "wrong.py"
    path.write_text("import torch\n\n"
                    "class Wrong(torch.nn.Module):\n"
                    "    def forward(self, step, state):\n"
                    "        return torch.zeros(7, 5)\n\n"
                    "def controller(sim, scene):\n"
                    "    return Wrong()\n")
    assert main(["run", "walker_small", "--backend", "warp", "--controller", str(path),
                 "--steps", "3", "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "action" in err and "7, 5" in err

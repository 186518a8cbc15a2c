"""Loading scenes and controllers by name or path, and the errors for what is missing."""

import pytest
import torch

from simdiff.backend import resolve_backend
from simdiff.scene import (
    SceneError,
    list_controllers,
    list_scenes,
    load_controller,
    load_scene,
    make_simulator,
)


def test_shipped_scenes_and_controllers_load():
    assert {"walker_small", "walker_large", "walker_3d"} <= set(list_scenes())
    assert {"mlp", "sinusoid"} <= set(list_controllers())
    sizes = {}
    for name in ("walker_small", "walker_large", "walker_3d"):
        scene = load_scene(name, steps=5)
        sizes[name] = (scene.model.dim, scene.model.particle_count)
        sim = make_simulator(scene, resolve_backend("warp"))
        for controller in ("mlp", "sinusoid"):
            action = load_controller(controller, sim, scene)(0, sim.initial_state())
            assert action.reshape(-1, sim.action_dim).shape == (sim.batch_size, sim.action_dim)
            assert bool((action.abs() <= 1).all())
    assert sizes == {"walker_small": (2, 20), "walker_large": (2, 63), "walker_3d": (3, 48)}


def test_scene_by_path_and_missing_files(tmp_path):
    with pytest.raises(SceneError, match="scene 'nope' not found .* known scenes: .*walker_small"):
        load_scene("nope")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(SceneError, match="defines no function `scene"):
        load_scene(str(empty))
    wrong = tmp_path / "wrong.py"
    wrong.write_text("def scene(**kw):\n    return 42\n")
    with pytest.raises(SceneError, match="returned int, not a Scene"):
        load_scene(str(wrong))
    custom = tmp_path / "custom.py"
    custom.write_text(
        "from simdiff.scene import Scene\n"
        "from simdiff.sims.mass_spring.builder import robot_from_ascii\n"
        "def scene(**kw):\n"
        "    return Scene('custom', 'mass_spring', robot_from_ascii('#'), 3, lambda r: r.final.particle_x.sum())\n"
    )
    assert load_scene(str(custom)).name == "custom"
    with pytest.raises(SceneError, match="controller 'nope' not found"):
        load_controller("nope", None, None)


def test_scene_options_reach_the_model():
    scene = load_scene("walker_small", friction=0.25, steps=7)
    assert scene.steps == 7 and scene.model.ground.friction == 0.25
    assert scene.model.spring_stiffness.dtype == torch.float64


def test_shipped_files_live_in_the_package_and_the_environment_overrides_them(tmp_path,
                                                                                monkeypatch):
    """Scenes and controllers are found in ``simdiff/scenes`` and ``simdiff/controllers`` (so
    an installed wheel has them); ``SIMDIFF_SCENES``/``SIMDIFF_CONTROLLERS`` point elsewhere,
    for names, the catalog that ``simdiff list`` reads, and loading."""
    from pathlib import Path

    import simdiff
    from simdiff.catalog import controller_dir, scene_catalog, scene_dir

    package = Path(simdiff.__file__).resolve().parent
    assert scene_dir() == package / "scenes" and controller_dir() == package / "controllers"
    assert (package / "scenes" / "walker_small.py").is_file()
    walker = (package / "scenes" / "walker_small.py").read_text()
    (tmp_path / "scenes").mkdir()
    (tmp_path / "scenes" / "my_walker.py").write_text(walker)
    (tmp_path / "controllers").mkdir()
    (tmp_path / "controllers" / "my_gait.py").write_text(
        (package / "controllers" / "sinusoid.py").read_text())
    monkeypatch.setenv("SIMDIFF_SCENES", str(tmp_path / "scenes"))
    monkeypatch.setenv("SIMDIFF_CONTROLLERS", str(tmp_path / "controllers"))
    assert list_scenes() == ["my_walker"] and list_controllers() == ["my_gait"]
    assert [info.name for info in scene_catalog()] == ["my_walker"]
    scene = load_scene("my_walker", steps=3)
    sim = make_simulator(scene, resolve_backend("warp"))
    action = load_controller("my_gait", sim, scene)(0, sim.initial_state())
    assert action.shape == (1, sim.action_dim)
    with pytest.raises(SceneError, match="scene 'walker_small' not found"):
        load_scene("walker_small")  # the override replaces the shipped folder

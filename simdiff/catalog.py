"""What the shipped scenes are, read from their files without running them.

``simdiff list``, the documentation's gallery and ``simdiff show`` need each scene's simulator,
description and whether it trains. Building a scene can compile kernels or simulate (an inverse
problem records its observations), so this module reads each scene file's syntax tree instead
(:mod:`ast`) and never imports torch or a backend. It relies on the shape every scene file has:

- a module docstring whose first sentence says what the scene is;
- a function ``scene(**options)`` that returns ``Scene(simulator="...", ...)`` called with
  keyword arguments;
- ``design=...`` (with ``objective=...``) for an inverse problem, and ``train={"controller":
  NAME, ...}`` for a scene whose actuators a controller learns to drive.

A ``description`` given as a constant or as an f-string of the scene function's option defaults
and the module's literal constants is rendered with those defaults; otherwise (it reads a built
model, say) the docstring's first sentence stands in. ``default_backend`` is rendered the same
way, and is None when it depends on a built model. :func:`check_against` compares what it read
with a built :class:`~simdiff.scene.Scene`, which the tests do for the cheap scenes.

This is the module that knows where scenes and controllers live (``scene_dir``,
``controller_dir``); :mod:`simdiff.scene` imports them from here.
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "DEFAULT_BACKEND",
    "Option",
    "SceneInfo",
    "check_against",
    "controller_dir",
    "describe_scene",
    "format_list",
    "read_scene",
    "scene_catalog",
    "scene_dir",
]

DEFAULT_BACKEND = "warp"
"""The backend of a scene that names none (``Scene.default_backend``'s default)."""

# The shipped scenes and controllers live inside the package (simdiff/scenes/,
# simdiff/controllers/: package data, so an installed wheel has them); SIMDIFF_SCENES and
# SIMDIFF_CONTROLLERS point simdiff at other folders.
_PACKAGE = Path(__file__).resolve().parent

Trains = Literal["controller", "design", "no"]


def scene_dir() -> Path:
    """The folder of the shipped scenes (``$SIMDIFF_SCENES`` if set)."""
    return Path(os.environ.get("SIMDIFF_SCENES") or _PACKAGE / "scenes")


def controller_dir() -> Path:
    """The folder of the shipped controllers (``$SIMDIFF_CONTROLLERS`` if set)."""
    return Path(os.environ.get("SIMDIFF_CONTROLLERS") or _PACKAGE / "controllers")


@dataclass(frozen=True)
class Option:
    """One keyword option of a scene function, as written in its signature.

    Attributes:
        name: The option's name (``--set NAME=VALUE``).
        annotation: Its type as written (``"int"``), or ``""`` when not annotated.
        default: Its default as written (``"680"``), or ``""`` when it has none.
    """

    name: str
    annotation: str = ""
    default: str = ""

    def __str__(self) -> str:
        text = self.name + (f": {self.annotation}" if self.annotation else "")
        return text + (f" = {self.default}" if self.default else "")


@dataclass(frozen=True)
class SceneInfo:
    """What a scene file declares, read without running it.

    Attributes:
        name: The file's stem, the name ``simdiff run NAME`` takes.
        path: The scene file.
        simulator: The ``Scene(simulator=...)`` name, or None if not a literal.
        trains: ``"design"`` (an inverse problem: ``design=`` and ``objective=``),
            ``"controller"`` (``train={"controller": ...}``), or ``"no"`` (roll out only).
        controller: The default controller of a scene that trains one, else None.
        description: The scene's one-line description (see the module docstring).
        summary: The first sentence of the file's docstring.
        default_backend: The backend it runs on by default, or None when that depends on a
            built model.
        options: The keyword options of ``scene()``.
        passes_to: For a scene taking ``**options``: the functions they are passed to
            (``("robot_from_ascii",)``).
        var_keyword: The name of that ``**options`` parameter, or None.
    """

    name: str
    path: Path
    simulator: str | None
    trains: Trains
    controller: str | None
    description: str
    summary: str
    default_backend: str | None
    options: tuple[Option, ...] = ()
    passes_to: tuple[str, ...] = ()
    var_keyword: str | None = None
    problems: tuple[str, ...] = field(default=(), compare=False)
    """What could not be read (for ``simdiff list`` to show instead of guessing)."""


def _first_sentence(text: str | None) -> str:
    if not text:
        return ""
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    # A full stop before a capital ends the sentence, except after an abbreviation.
    end = re.search(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)(?<!\bvs)\.\s+(?=[A-Z])", paragraph)
    return paragraph if end is None else paragraph[:end.start() + 1]


def _literals(tree: ast.Module) -> dict[str, Any]:
    """Module-level ``NAME = literal`` assignments."""
    names: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
                node.targets[0], ast.Name):
            try:
                names[node.targets[0].id] = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                pass
    return names


def _defaults(function: ast.FunctionDef) -> dict[str, ast.expr]:
    args = function.args
    positional = args.posonlyargs + args.args
    pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
    pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
    return {a.arg: d for a, d in pairs}


def _options(function: ast.FunctionDef) -> tuple[Option, ...]:
    defaults = _defaults(function)
    args = function.args
    return tuple(
        Option(a.arg, ast.unparse(a.annotation) if a.annotation else "",
               ast.unparse(defaults[a.arg]) if a.arg in defaults else "")
        for a in args.posonlyargs + args.args + args.kwonlyargs
    )


def _evaluate(node: ast.expr, names: dict[str, Any]) -> Any:
    """The value of an expression over literal ``names`` only (no builtins); raises when it
    reads anything else (a built model, a call)."""
    code = compile(ast.Expression(node), "<scene option>", "eval")
    return eval(code, {"__builtins__": {}}, dict(names))


def _scene_call(function: ast.FunctionDef) -> ast.Call | None:
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id == "Scene":
            return node
    return None


def _passes_to(function: ast.FunctionDef, var_keyword: str | None) -> tuple[str, ...]:
    if var_keyword is None:
        return ()
    found = []
    for node in ast.walk(function):
        if not isinstance(node, ast.Call):
            continue
        for keyword in node.keywords:
            if keyword.arg is None and isinstance(keyword.value, ast.Name) and \
                    keyword.value.id == var_keyword:
                found.append(ast.unparse(node.func))
    return tuple(dict.fromkeys(found))


def read_scene(path: str | Path) -> SceneInfo:
    """What the scene file at ``path`` declares (see the module docstring), without running
    it. Fields it cannot read are None and named in ``problems``."""
    path = Path(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    summary = _first_sentence(ast.get_docstring(tree))
    problems: list[str] = []
    function = next((n for n in tree.body if isinstance(n, ast.FunctionDef)
                     and n.name == "scene"), None)
    if function is None:
        return SceneInfo(path.stem, path, None, "no", None, summary, summary, None,
                         problems=("no function scene()",))
    var_keyword = function.args.kwarg.arg if function.args.kwarg else None
    names = _literals(tree)
    for option, default in _defaults(function).items():
        try:
            names[option] = ast.literal_eval(default)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            pass
    call = _scene_call(function)
    keywords = {k.arg: k.value for k in call.keywords if k.arg} if call else {}
    if call is None:
        problems.append("no Scene(...) call in scene()")

    def value(key: str, fallback: Any) -> Any:
        if key not in keywords:
            return fallback
        try:
            return _evaluate(keywords[key], names)
        except (NameError, AttributeError, TypeError, ValueError, KeyError, IndexError):
            # It reads a built model or calls something: not known statically.
            return None

    simulator = value("simulator", None)
    if not isinstance(simulator, str):
        problems.append("simulator is not a literal")
        simulator = None
    description = value("description", "")
    if not isinstance(description, str) or not description:
        description = summary
    backend = value("default_backend", DEFAULT_BACKEND)
    backend = backend if isinstance(backend, str) else None
    train = value("train", {})
    controller = train.get("controller") if isinstance(train, dict) else None
    if "design" in keywords:
        trains: Trains = "design"
    elif isinstance(controller, str):
        trains = "controller"
    else:
        trains, controller = "no", None
    return SceneInfo(
        name=path.stem, path=path, simulator=simulator, trains=trains,
        controller=controller if trains == "controller" else None,
        description=description, summary=summary, default_backend=backend,
        options=_options(function), passes_to=_passes_to(function, var_keyword),
        var_keyword=var_keyword, problems=tuple(problems),
    )


def scene_catalog(folder: str | Path | None = None) -> list[SceneInfo]:
    """Every scene file of ``folder`` (default :func:`scene_dir`), sorted by name; files whose
    names start with ``_`` are left out."""
    folder = Path(folder) if folder is not None else scene_dir()
    if not folder.is_dir():
        return []
    return [read_scene(p) for p in sorted(folder.glob("*.py")) if not p.stem.startswith("_")]


def check_against(info: SceneInfo, scene: Any) -> list[str]:
    """Where what was read from the file disagrees with the built ``scene`` (a
    :class:`~simdiff.scene.Scene` built with default options); empty when it agrees."""
    from simdiff.train import _has_actuators

    built_trains = ("design" if scene.design is not None
                    else "controller" if _has_actuators(scene) else "no")
    found = []
    if info.simulator != scene.simulator:
        found.append(f"simulator: read {info.simulator!r}, built {scene.simulator!r}")
    if info.trains != built_trains:
        found.append(f"trains: read {info.trains!r}, built {built_trains!r}")
    if info.default_backend is not None and info.default_backend != scene.default_backend:
        found.append(f"default_backend: read {info.default_backend!r}, "
                     f"built {scene.default_backend!r}")
    if info.description != info.summary and info.description != scene.description:
        found.append(f"description: read {info.description!r}, built {scene.description!r}")
    return found


_TRAINS_WORDS = {"controller": "controller", "design": "design", "no": "-"}


def format_list(folder: str | Path | None = None, *, width: int | None = None) -> str:
    """The text of ``simdiff list``: every scene's simulator, what it trains, default backend
    and description, then the controllers; read from the files, nothing is built.
    Descriptions are cut to ``width`` columns when given (a terminal's width)."""
    infos = scene_catalog(folder)
    name_width = max([len(i.name) for i in infos] + [5])
    lines = ["scenes:",
             (f"  {'name':<{name_width}}  {'simulator':<11}  {'trains':<10}  {'backend':<7}  "
              "description")]
    for info in infos:
        head = (f"  {info.name:<{name_width}}  {info.simulator or '?':<11}  "
                f"{_TRAINS_WORDS[info.trains]:<10}  {info.default_backend or 'by size':<7}  ")
        text = info.description if not info.problems else f"(unreadable: {info.problems[0]})"
        room = max(width - len(head), 20) if width else len(text)
        lines.append(head + (text if len(text) <= room else text[:room - 1] + "…"))
    lines.append("controllers:")
    folder = controller_dir()
    names = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")) \
        if folder.is_dir() else []
    for name in names:
        doc = _first_sentence(ast.get_docstring(ast.parse((folder / f"{name}.py").read_text())))
        lines.append(f"  {name:<{name_width}}  {doc}")
    lines.append("`simdiff show NAME` prints a scene's options; `trains`: what `simdiff train` "
                 "optimizes")
    return "\n".join(lines)


def _scene_path(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    if text.endswith(".py") or os.sep in text:
        return Path(text)
    return scene_dir() / f"{text}.py"


def _pass_through_calls(function: ast.FunctionDef, var_keyword: str
                        ) -> list[tuple[str, set[str], int, list[str]]]:
    """``(callee, keywords it is given explicitly, positional arguments, names of the dicts
    merged under the options)`` of each call in ``function`` that receives
    ``**var_keyword``, alone or merged last as in ``**{**DEFAULTS, **var_keyword}``."""

    def passes(value: ast.expr) -> list[str] | None:
        if isinstance(value, ast.Name) and value.id == var_keyword:
            return []
        if isinstance(value, ast.Dict) and all(k is None for k in value.keys) and value.values:
            *under, last = value.values
            if isinstance(last, ast.Name) and last.id == var_keyword and all(
                    isinstance(v, ast.Name) for v in under):
                return [v.id for v in under]
        return None

    calls = []
    for node in ast.walk(function):
        if not isinstance(node, ast.Call):
            continue
        for k in node.keywords:
            merged = passes(k.value) if k.arg is None else None
            if merged is not None:
                calls.append((ast.unparse(node.func), {k.arg for k in node.keywords if k.arg},
                              len(node.args), merged))
                break
    return calls


def _parameter_text(parameter: Any) -> str:
    import inspect

    annotation = parameter.annotation
    if annotation is inspect.Parameter.empty:
        kind = ""
    elif isinstance(annotation, type):
        kind = annotation.__name__
    else:
        kind = str(annotation).replace("typing.", "")
    text = parameter.name + (f": {kind}" if kind else "")
    if parameter.default is not inspect.Parameter.empty:
        text += f" = {parameter.default!r}"
    return text


def describe_scene(name_or_path: str | Path, **options: Any) -> str:
    """The text of ``simdiff show``: a scene built with ``options`` (its description,
    simulator, default backend, horizon, what it trains) and its options with types and
    defaults, including those a ``**options`` parameter passes on to a builder.

    Raises:
        SceneError: the scene does not exist or does not build (from
            :func:`simdiff.scene.load_scene`).
    """
    import inspect

    from simdiff.scene import _load_module, load_scene
    from simdiff.train import _has_actuators

    scene = load_scene(name_or_path, **options)
    path = _scene_path(name_or_path)
    module = _load_module(name_or_path, scene_dir(), "scene")
    info = read_scene(path)
    train = scene.train
    if scene.design is not None:
        trains = "yes: an inverse problem; `simdiff train` fits its design"
    elif _has_actuators(scene):
        trains = f"yes: a controller (default: {train.get('controller', 'mlp')})"
    else:
        trains = f"no: nothing to act on; `simdiff run {info.name}` rolls it out"
    if trains.startswith("yes"):
        trains += "".join(f", {k} {train[k]}" for k in ("lr", "iters") if k in train)
    lines = [
        f"{info.name}: {scene.description or info.summary}",
        f"  file:            {path}",
        f"  simulator:       {scene.simulator}",
        f"  default backend: {scene.default_backend}",
        f"  precision:       {train.get('precision', 'float32')}",
        f"  horizon:         {scene.steps} steps",
        f"  trains:          {trains}",
        "options (--set NAME=VALUE):",
    ]
    signature = inspect.signature(module.scene)
    var_keyword = None
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            var_keyword = parameter.name
        elif parameter.kind is not parameter.VAR_POSITIONAL:
            lines.append(f"  {_parameter_text(parameter)}")
    if var_keyword is not None:
        tree = ast.parse(path.read_text())
        function = next(n for n in tree.body if isinstance(n, ast.FunctionDef)
                        and n.name == "scene")
        for callee, given, positional, merged in _pass_through_calls(function, var_keyword):
            overrides: dict[str, Any] = {}
            for name in merged:  # the scene's own defaults for the builder's options
                overrides.update(getattr(module, name, None) or {})
            target: Any = module
            for part in callee.split("."):
                target = getattr(target, part, None)
            lines.append(f"  **{var_keyword}: passed to {callee}():")
            if target is None:
                lines.append("    (not found in the scene file)")
                continue
            rest = list(inspect.signature(target).parameters.values())[positional:]
            for parameter in rest:
                if parameter.name not in given and parameter.kind in (
                        parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                    if parameter.name in overrides:
                        parameter = parameter.replace(default=overrides[parameter.name])
                    lines.append(f"    {_parameter_text(parameter)}")
    if not signature.parameters:
        lines.append("  (none)")
    return "\n".join(lines)

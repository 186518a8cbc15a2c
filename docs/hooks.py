"""MkDocs hooks: the gallery page is generated from the scene files at build time.

Every scene in ``simdiff/scenes/`` gets a section, read by :mod:`simdiff.catalog` without running
the scene, so the page lists exactly the shipped scenes. Poster frames and videos come from
``python docs/gen_gallery.py`` (``docs/gallery/NAME.png`` and ``NAME.gif``); a scene whose files
are absent is listed without them, so the build never depends on renders being present.
The home page's animations are the README's samples, copied into the built site.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- scenes -->"
TRAINS = {
    "controller": "trains a controller",
    "design": "inverse problem: trains a design",
    "no": "rolled out, nothing to train",
}


def gallery_markdown(docs_dir: Path) -> str:
    """The gallery's scene sections, as Markdown."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from simdiff.catalog import scene_catalog

    lines = []
    for info in scene_catalog(ROOT / "simdiff" / "scenes"):
        lines += [f"## {info.name}", "", info.description, ""]
        if info.summary and info.summary != info.description:
            lines += [f"*{info.summary}*", ""]
        poster = docs_dir / "gallery" / f"{info.name}.png"
        video = docs_dir / "gallery" / f"{info.name}.gif"
        if video.is_file():
            lines += [f"[![{info.name}](gallery/{info.name}.png)](gallery/{info.name}.gif)"
                      if poster.is_file() else f"![{info.name}](gallery/{info.name}.gif)", ""]
        elif poster.is_file():
            lines += [f"![{info.name}](gallery/{info.name}.png)", ""]
        trains = TRAINS[info.trains]
        if info.controller:
            trains += f" (default: `{info.controller}`)"
        command = "train" if info.trains != "no" else "run"
        lines += [
            (f"- simulator: `{info.simulator}`, default backend: "
             f"`{info.default_backend or 'chosen by size'}`; {trains}"),
            f"- options: {', '.join(f'`{o}`' for o in info.options) or 'none'}"
            + (f", and those of `{'`, `'.join(info.passes_to)}`" if info.passes_to else ""),
            (f"- `simdiff {command} {info.name}` · `simdiff show {info.name}` · "
             f"source: `simdiff/scenes/{info.name}.py`"),
            "",
        ]
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, gallery_markdown(Path(config["docs_dir"])))
    return markdown


def on_post_build(config) -> None:
    """The README's sample animations (``renders/samples/*.gif``) serve the home page too,
    copied into the site rather than kept twice in the repository."""
    assets = Path(config["site_dir"]) / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    for sample in sorted((ROOT / "renders" / "samples").glob("*.gif")):
        shutil.copy2(sample, assets / sample.name)

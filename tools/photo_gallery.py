"""The README's gallery: ``unseg segment`` on a varied folder of photos, before and after, seen in a real browser.

Writes the photos (from scikit-image's bundled data, a dev dependency; their licences below)
into ``OUT/photos/``, segments them twice (``before``: k-means over the whole folder with 8
clusters, segment's default until the per-image method; ``after``: segment's default), and
takes a screenshot of each ``index.html`` with headless Chromium (``--chromium``), as a visitor
sees the page. ``--docs`` also writes the screenshots, shrunk, where the README shows them.

Photos (scikit-image's ``skimage.data``): astronaut (Eileen Collins, NASA, public domain),
chelsea (a cat; CC0, Stefan van der Walt), coffee (CC0, Rachel Michetti), rocket (SpaceX,
public domain), camera (a cameraman; CC0, Lav Varshney). ``--motorcycle`` adds the left view of
the Middlebury 2014 stereo pair that scikit-image ships (Scharstein et al.), whose terms are
research use: it is never written to ``--docs``.

Run: ``python tools/photo_gallery.py --out runs/photos [--motorcycle] [--docs]``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from PIL import Image

from unseg import segment

DOCS = Path(__file__).resolve().parents[1] / "src" / "unseg" / "docs"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def write_photos(folder: Path, motorcycle: bool) -> None:
    from skimage import data

    photos = {
        "astronaut": data.astronaut(),
        "cat": data.chelsea(),
        "coffee": data.coffee(),
        "rocket": data.rocket(),
        "cameraman": data.camera(),
    }
    if motorcycle:
        photos["motorcycle"] = data.stereo_motorcycle()[0]
    folder.mkdir(parents=True, exist_ok=True)
    for name, pixels in photos.items():
        Image.fromarray(pixels).save(folder / f"{name}.png")


def screenshot(chromium: str, page: Path, png: Path, height: int) -> None:
    """The page as a 1280 px wide browser window shows it."""
    profile = png.parent / ".chromium-profile"
    subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size=1280,{height}",
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/photos"))
    p.add_argument("--motorcycle", action="store_true", help="add the Middlebury motorcycle (research use)")
    p.add_argument("--chromium", default="chromium", help="the browser (apt-get install chromium)")
    p.add_argument("--height", type=int, default=1400, help="screenshot height in px")
    p.add_argument("--docs", action="store_true", help="also write the screenshots the README shows")
    args = p.parse_args()
    if args.docs and args.motorcycle:
        p.error("--docs ships pictures: leave out --motorcycle (research-use photo)")
    photos = args.out / "photos"
    write_photos(photos, args.motorcycle)
    for name, options in (("before", {"method": "kmeans", "k": 8}), ("after", {})):
        run = segment(photos, out_dir=args.out / name, **options)
        print(f"{name}: {run.describe()}; {run.gallery}")
        png = args.out / f"{name}.png"
        screenshot(args.chromium, run.gallery, png, args.height)
        print(f"{name}: screenshot {png}")
        if args.docs:
            shot = Image.open(png).convert("RGB")
            shot.resize((960, round(shot.height * 960 / shot.width)), Image.LANCZOS).save(
                DOCS / f"segment_photos_{name}.jpg", quality=82
            )


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A figure of each run's views at 0, 90, 180 and 270 degrees: one row per
method x seed, for the runs `fsd3d eval` made (docs/results.md's multi-view
figure).

Reads OUT/runs/<prompt>/<method>/s<seed>/renders.png, the grid of the views
eval classified (24 views 15 degrees apart from azimuth 0, 8 a row, 2-pixel
padding; `--views`, `--columns` for other grids), keeps the views at 0, 90,
180 and 270 degrees and enlarges them `--scale` times (nearest neighbour).

    python tools/figure_views.py --eval eval-mv --prompt "a red object" --methods fsd,sds --seeds 0,1,2,3 \\
        --out docs/figures/mv4-a-red-object.png
"""

import argparse
import os
import re

from PIL import Image, ImageDraw

PAD = 2


def slug(text):
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:60].rstrip("-") or "untitled"


def views(path, n, columns, scale):
    grid = Image.open(path).convert("RGB")
    cell = (grid.width - (columns + 1) * PAD) // columns
    out = []
    for k in (0, n // 4, n // 2, 3 * n // 4):
        r, c = divmod(k, columns)
        x, y = PAD + c * (cell + PAD), PAD + r * (cell + PAD)
        out.append(grid.crop((x, y, x + cell, y + cell)).resize((cell * scale, cell * scale), Image.NEAREST))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval", required=True, help="the eval's output folder")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--methods", default="fsd,sds")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--out", required=True)
    ap.add_argument("--views", type=int, default=24)
    ap.add_argument("--columns", type=int, default=8)
    ap.add_argument("--scale", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for m in args.methods.split(","):
        for s in args.seeds.split(","):
            run = os.path.join(args.eval, "runs", slug(args.prompt), m, f"s{s}", "renders.png")
            rows.append((f"{m.upper()}, seed {s}", views(run, args.views, args.columns, args.scale)))
    cell = rows[0][1][0].width
    label_w, head_h = 90, 18
    W = label_w + 4 * (cell + PAD) + PAD
    H = head_h + len(rows) * (cell + PAD) + PAD
    fig = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(fig)
    for k, az in enumerate((0, 90, 180, 270)):
        d.text((label_w + PAD + k * (cell + PAD) + cell // 2 - 12, 3), f"{az} deg", fill="black")
    for r, (label, imgs) in enumerate(rows):
        y = head_h + PAD + r * (cell + PAD)
        d.text((4, y + cell // 2 - 5), label, fill="black")
        for k, im in enumerate(imgs):
            x = label_w + PAD + k * (cell + PAD)
            fig.paste(im, (x, y))
            d.rectangle((x - 1, y - 1, x + cell, y + cell), outline=(170, 170, 170))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.save(args.out)
    print("wrote", args.out, fig.size)


if __name__ == "__main__":
    main()

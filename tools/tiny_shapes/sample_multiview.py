#!/usr/bin/env python3
"""Sample the exported 4-view prior and draw its model-card figures.

Every sample is one object's 4 views drawn together (multiview.ddim_sample:
diffusers DDIM, 50 steps, CFG 1.5, eta 1, clip_sample on) at elevation 15
degrees, azimuths 0, 90, 180, 270 plus a per-sample start.

Writes into the model folder:
  samples.png   rows: every shape in two colours (12 prompts) x 2 seeds; each cell a row of the 4 views
  loss.png      the fine-tuning loss from <workdir>/loss.csv
and prints the classifier's verdict on every view: a sample counts as
consistent when all 4 of its views are the prompt's shape and colour.
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import multiview  # noqa: E402
import prior  # noqa: E402
from common import COLOURS, SHAPES, caption  # noqa: E402
from sample_prior import plot_loss  # noqa: E402
from train_classifier import load_classifier, predict  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(REPO, "weights", "tiny-shapes-4view"))
    ap.add_argument("--workdir", default="/tmp/tiny_shapes_mv_run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--cfg", type=float, default=1.5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    te, unet, procs, tok = multiview.load(args.model)
    prompts, seeds, labels = [], [], []
    for si in range(len(SHAPES)):
        for ci in (si % len(COLOURS), (si + 3) % len(COLOURS)):
            for k in range(args.seeds):
                prompts.append(caption(si, ci))
                seeds.append(1000 * si + 10 * ci + k)
                labels.append((si, ci))
    starts = [(37 * s) % 90 for s in range(len(prompts))]
    x = multiview.ddim_sample(te, unet, procs, tok, prompts, seeds, 15.0, starts, cfg=args.cfg)
    imgs = prior.to_uint8(x.reshape(-1, 3, 32, 32))  # [N*4, 32, 32, 3]
    # Two samples (8 views) a row.
    prior.save_grid(imgs, os.path.join(args.model, "samples.png"), ncol=8)
    clf = load_classifier(os.path.join(args.model, "classifier", "model.safetensors"))
    _, s, c = predict(clf, imgs)
    ok = (s.argmax(1).numpy().reshape(-1, 4) == np.array([l[0] for l in labels])[:, None]) & (
        c.argmax(1).numpy().reshape(-1, 4) == np.array([l[1] for l in labels])[:, None]
    )
    print(f"views right (shape and colour): {ok.sum()}/{ok.size}; samples with all 4 views right: {ok.all(1).sum()}/{len(ok)}")
    for p, row in zip(prompts, ok):
        if not row.all():
            print(f"  {p}: views right {row.astype(int).tolist()}")
    csv = os.path.join(args.workdir, "loss.csv")
    if os.path.exists(csv):
        plot_loss(csv, os.path.join(args.model, "loss.png"), "tiny-shapes-4view fine-tuning loss", "step (8 objects x 4 views)")


if __name__ == "__main__":
    main()

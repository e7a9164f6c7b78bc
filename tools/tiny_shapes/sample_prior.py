#!/usr/bin/env python3
"""Sample the exported tiny-shapes prior and draw the model-card figures.

DDIM (diffusers DDIMScheduler from scheduler/scheduler_config.json semantics,
50 steps, eta 0, clip_sample on), CFG scale 3 (eps = eps_u + s (eps_c - eps_u)).

Writes into the model folder:
  samples.png      36 prompts 'a {colour} {shape}' (rows: shapes, columns: colours) x --seeds seeds
  red_object.png   'a red object', 16 seeds
  loss.png         loss curve from <workdir>/loss.csv (if present)
and samples.npz (uint8 images + prompts) into the workdir for the classifier check.
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import COLOURS, SHAPES, caption  # noqa: E402
import prior  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def grid_prompts(n_seeds):
    prompts, seeds, labels = [], [], []
    for si, s in enumerate(SHAPES):
        for k in range(n_seeds):
            for ci, c in enumerate(COLOURS):
                prompts.append(caption(si, ci))
                seeds.append(k)
                labels.append((si, ci))
    return prompts, seeds, labels


def plot_loss(csv, out, title="tiny-shapes prior training loss", xlabel="step (batch 32)"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = np.genfromtxt(csv, delimiter=",", names=True)
    if d.size < 2:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(d["step"], d["loss"], lw=0.6, alpha=0.5, label="loss (mean of 10 steps)")
    k = 20
    if len(d) > k:
        sm = np.convolve(d["loss"], np.ones(k) / k, mode="valid")
        ax.plot(d["step"][k - 1 :], sm, lw=1.5, label=f"moving average ({k * 10} steps)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("epsilon MSE")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def run(model_dir, workdir, threads=1, n_seeds=2, steps=50, cfg=3.0):
    torch.set_num_threads(threads)
    te, unet, tok = prior.load(model_dir)
    t0 = time.time()
    prompts, seeds, labels = grid_prompts(n_seeds)
    x = prior.ddim_sample(te, unet, tok, prompts, seeds, steps=steps, cfg=cfg)
    imgs = prior.to_uint8(x)
    prior.save_grid(imgs, os.path.join(model_dir, "samples.png"), ncol=len(COLOURS) * n_seeds)
    red = prior.ddim_sample(te, unet, tok, ["a red object"] * 16, list(range(16)), steps=steps, cfg=cfg)
    red = prior.to_uint8(red)
    prior.save_grid(red, os.path.join(model_dir, "red_object.png"), ncol=8)
    np.savez_compressed(
        os.path.join(workdir, "samples.npz"),
        images=imgs,
        prompts=np.array(prompts),
        seeds=np.array(seeds),
        shape_id=np.array([l[0] for l in labels]),
        colour_id=np.array([l[1] for l in labels]),
        red_images=red,
    )
    csv = os.path.join(workdir, "loss.csv")
    if os.path.exists(csv):
        plot_loss(csv, os.path.join(model_dir, "loss.png"))
    print(f"sampled {len(prompts) + 16} images in {time.time() - t0:.0f}s", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(REPO, "weights", "tiny-shapes"))
    ap.add_argument("--workdir", default="/tmp/tiny_shapes_run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=2, help="seeds per prompt in samples.png")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--cfg", type=float, default=3.0)
    args = ap.parse_args()
    run(args.model, args.workdir, args.threads, args.seeds, args.steps, args.cfg)


if __name__ == "__main__":
    main()

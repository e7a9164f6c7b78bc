#!/usr/bin/env python3
"""Fine-tune the tiny-shapes prior into its 4-view, camera-conditioned variant (tiny-shapes-4view).

What MVDream does to SD 2.1, on the tiny prior: the UNet gains a camera
embedding and cross-view self-attention (multiview.py) and is fine-tuned on
sets of 4 renders of one object, 90 degrees apart, each with its camera. The
UNet starts as the shipped single-view one (the camera MLP's output layer at
zero, so step 0 is the single-view model); the text encoder stays frozen, so
the captions' embeddings are computed once.

Per object: one timestep and one caption for all its views (caption dropout
as the single-view training: shape kept p 0.8, colour p 0.8, empty caption p
0.1). No flips: mirroring a view set would also mirror the order of its
cameras. eps-MSE, AdamW, EMA, gradient clipping 1.

Reproducible and resumable like train_prior.py: the batch of step k is a pure
function of (--seed, k).

  nohup python tools/tiny_shapes/train_multiview.py --max-minutes 90 > /tmp/tiny_shapes_mv_run/train.out 2>&1 &
"""

import argparse
import copy
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import TrainLog  # noqa: E402
import multiview  # noqa: E402
import prior  # noqa: E402
from train_prior import batch_for_step, caption_table  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# What the engine needs to know about the views, written into fsd3d_prior.json.
VIEWS_JSON = {
    "views": {
        "num_frames": 4,
        "azimuth_spacing_deg": 90.0,
        "shared": "elevation, distance and fovy are shared by the views of an object; each view has its own light",
        "camera_input": "fsd3d's mvdream_camera: the view's camera-to-world matrix, translation normalised, row-major",
    }
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/tmp/tiny_shapes_data/train_4view.npz")
    ap.add_argument("--workdir", default="/tmp/tiny_shapes_mv_run")
    ap.add_argument("--init-from", default=os.path.join(REPO, "weights", "tiny-shapes"))
    ap.add_argument("--out", default=os.path.join(REPO, "weights", "tiny-shapes-4view"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--objects", type=int, default=8, help="objects per batch (x4 views)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--max-steps", type=int, default=100000)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--p-empty", type=float, default=0.10)
    ap.add_argument("--p-keep-shape", type=float, default=0.8)
    ap.add_argument("--p-keep-colour", type=float, default=0.8)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--bench", type=int, default=0, help="only time this many steps and exit")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.workdir, exist_ok=True)
    deadline = time.time() + 60.0 * args.max_minutes if args.max_minutes else None

    data = np.load(args.data)
    images = torch.from_numpy(data["images"]).permute(0, 1, 4, 2, 3).contiguous()  # uint8 [N, V, 3, 32, 32]
    n, frames = images.shape[:2]
    cameras = torch.from_numpy(multiview.mvdream_camera(data["elevation_deg"][:, None], data["azimuth_deg"]))  # [N, V, 16]
    shape_id = torch.from_numpy(data["shape_id"])
    colour_id = torch.from_numpy(data["colour_id"])

    te, unet0, tok = prior.load(args.init_from)
    unet = multiview.build_unet_from(unet0)
    procs = multiview.install_cross_view(unet)
    caps, cap_ids = caption_table(tok)
    with torch.no_grad():
        cap_emb = te(cap_ids).last_hidden_state  # [50, 77, D], frozen
    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    ema = copy.deepcopy(unet).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    ac = prior.alphas_cumprod()

    step = 0
    ckpt_path = os.path.join(args.workdir, "ckpt.pt")
    if args.resume and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, weights_only=False)
        unet.load_state_dict(ck["unet"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        step = ck["step"]
        print(f"resumed at step {step}", flush=True)
    log = TrainLog(os.path.join(args.workdir, "loss.csv"), args.log_every, fresh=step == 0, bench=bool(args.bench))

    def save_ckpt():
        tmp = ckpt_path + ".tmp"
        torch.save({"unet": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step, "args": vars(args)}, tmp)
        os.replace(tmp, ckpt_path)

    unet.train()
    steps_this_run = 0
    B = args.objects
    while step < args.max_steps:
        if deadline and time.time() > deadline:
            print("time limit reached", flush=True)
            break
        idx = torch.from_numpy(batch_for_step(step, args.seed, n, B))
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        x0 = (images[idx].float() / 127.5 - 1.0).reshape(B * frames, 3, 32, 32)
        cams = cameras[idx].reshape(B * frames, multiview.CAMERA_DIM)
        s = shape_id[idx].clone()
        c = colour_id[idx].clone()
        s[torch.rand(B, generator=g) > args.p_keep_shape] = -1
        c[torch.rand(B, generator=g) > args.p_keep_colour] = -1
        cap_idx = (s + 1) * 7 + (c + 1)
        cap_idx[torch.rand(B, generator=g) < args.p_empty] = len(caps) - 1
        ctx = cap_emb[cap_idx].repeat_interleave(frames, 0)
        t = torch.randint(0, 1000, (B,), generator=g).repeat_interleave(frames)
        eps = torch.randn(x0.shape, generator=g)
        xt = ac[t].sqrt()[:, None, None, None] * x0 + (1 - ac[t]).sqrt()[:, None, None, None] * eps

        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        for pg in opt.param_groups:
            pg["lr"] = lr
        pred = multiview.forward(unet, procs, xt, t, ctx, cams, frames)
        loss = (pred - eps).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        steps_this_run += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for p, q in zip(unet.parameters(), ema.parameters()):
                q.lerp_(p, 1 - decay)
        log.add(step, loss.item(), lr)
        if args.bench:
            if steps_this_run >= args.bench:
                return
            continue
        if step % args.ckpt_every == 0:
            save_ckpt()

    save_ckpt()
    print(f"training stopped at step {step}, this run {log.elapsed():.0f}s", flush=True)
    multiview.export(args.out, args.init_from, ema.float().cpu(), VIEWS_JSON | {"name": "tiny-shapes-4view"})
    print("exported EMA weights to", args.out, flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Train the tiny-shapes prior: CLIPTextModel + UNet2DConditionModel in pixel space.

Epsilon-prediction MSE on 32x32 renders, linear betas 1e-4..0.02 (1000 steps),
caption dropout for classifier-free guidance, AdamW, EMA of the weights.

Reproducible and resumable: the batch of step k is a pure function of
(--seed, k) (epoch permutations from numpy default_rng([seed, epoch]); noise,
timesteps, flips and caption dropout from torch.Generator seeded by
seed * 1_000_003 + k), so a resumed run draws exactly the batches an
uninterrupted one would.

Run in the background, e.g.
  nohup python tools/tiny_shapes/train_prior.py --max-steps 6000 --deadline 12:40 > /tmp/tiny_shapes_run/train.out 2>&1 &
The loss goes to <workdir>/loss.csv, a checkpoint to <workdir>/ckpt.pt every
--ckpt-every steps; at the end the EMA weights are exported to --out in the
diffusers layout and sample grids are drawn (sample_prior.py).
"""

import argparse
import copy
import datetime as dt
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import COLOURS, SHAPES, caption, TrainLog  # noqa: E402
import prior  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def caption_table(tok):
    """Token ids of every caption variant: index (shape+1)*7 + (colour+1), plus 49 = ''."""
    caps = []
    for s in range(-1, len(SHAPES)):
        for c in range(-1, len(COLOURS)):
            caps.append(caption(s, c))
    caps.append("")
    return caps, prior.tokenize(tok, caps)


def batch_for_step(step, seed, n, bs):
    per_epoch = n // bs
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[k * bs : (k + 1) * bs]


def parse_deadline(s):
    if not s:
        return None
    h, m = map(int, s.split(":"))
    now = dt.datetime.now()
    d = now.replace(hour=h, minute=m, second=0, microsecond=0)
    if d < now:
        d += dt.timedelta(days=1)
    return d.timestamp()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/tmp/tiny_shapes_data/train.npz")
    ap.add_argument("--workdir", default="/tmp/tiny_shapes_run")
    ap.add_argument("--out", default=os.path.join(REPO, "weights", "tiny-shapes"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--max-steps", type=int, default=6000)
    ap.add_argument("--deadline", default=None, help="HH:MM local wall clock: stop training (and export) by then")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop training (and export) after this many minutes of this run")
    ap.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda); batches are drawn on the CPU either way, so the data seen does not depend on it")
    ap.add_argument("--ckpt-every", type=int, default=200)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--p-empty", type=float, default=0.10, help="probability of the empty caption (CFG)")
    ap.add_argument("--p-keep-shape", type=float, default=0.8)
    ap.add_argument("--p-keep-colour", type=float, default=0.8)
    ap.add_argument("--layers-per-block", type=int, default=1)
    ap.add_argument("--text-hidden", type=int, default=64)
    ap.add_argument("--text-layers", type=int, default=3)
    ap.add_argument("--high-noise-weight", type=float, default=1.0,
                    help="weight each sample's eps-MSE by min(1/alpha_bar_t, this): 1 = plain eps loss; larger values stress "
                    "the high-noise steps, where eps-prediction barely penalises a wrong coarse shape (eps-MSE = SNR * x0-MSE)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (weights and optimiser stay f32)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init-from", default=None, help="warm start: load text encoder and UNet from this diffusers folder (e.g. the shipped weights; both the live and the EMA copy start from them)")
    ap.add_argument("--start-step", type=int, default=0, help="with --init-from: the step count the loaded weights stand for (batches continue from there, warm-up is skipped)")
    ap.add_argument("--bench", type=int, default=0, help="only time this many steps and exit")
    ap.add_argument("--no-sample", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    os.makedirs(args.workdir, exist_ok=True)
    deadline = parse_deadline(args.deadline)
    if args.max_minutes is not None:
        run_end = time.time() + 60.0 * args.max_minutes
        deadline = min(deadline, run_end) if deadline else run_end
    dev = torch.device(args.device)

    data = np.load(args.data)
    images = torch.from_numpy(data["images"]).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
    shape_id = torch.from_numpy(data["shape_id"])
    colour_id = torch.from_numpy(data["colour_id"])
    n = images.shape[0]

    tok = prior.build_tokenizer()
    caps, cap_ids = caption_table(tok)
    te, unet = prior.build_models(args.seed, args.text_hidden, args.text_layers, args.layers_per_block)
    print(f"unet params {prior.count_params(unet)}, text encoder params {prior.count_params(te)}", flush=True)
    if args.init_from:
        te0, unet0, _ = prior.load(args.init_from)
        te.load_state_dict(te0.state_dict())
        unet.load_state_dict(unet0.state_dict())
    te, unet = te.to(dev), unet.to(dev)
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    ema_te, ema_unet = copy.deepcopy(te).eval(), copy.deepcopy(unet).eval()
    for p in list(ema_te.parameters()) + list(ema_unet.parameters()):
        p.requires_grad_(False)
    ac = prior.alphas_cumprod()

    step = 0
    if args.init_from:
        step = args.start_step
        print(f"warm start from {args.init_from} at step {step}", flush=True)
    ckpt_path = os.path.join(args.workdir, "ckpt.pt")
    if args.resume and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, weights_only=False, map_location=dev)
        te.load_state_dict(ck["te"])
        unet.load_state_dict(ck["unet"])
        ema_te.load_state_dict(ck["ema_te"])
        ema_unet.load_state_dict(ck["ema_unet"])
        opt.load_state_dict(ck["opt"])
        step = ck["step"]
        print(f"resumed at step {step}", flush=True)

    if args.init_from and not args.resume and step >= args.max_steps:
        # Exporting the loaded weights unchanged over --out is never what a warm start means.
        sys.exit(f"nothing to train: the warm start is at step {step} and --max-steps is {args.max_steps}; raise --max-steps")

    log = TrainLog(os.path.join(args.workdir, "loss.csv"), args.log_every, fresh=(step == 0 or (args.init_from and not args.resume)), bench=bool(args.bench))

    def save_ckpt():
        tmp = ckpt_path + ".tmp"
        torch.save(
            {
                "te": te.state_dict(),
                "unet": unet.state_dict(),
                "ema_te": ema_te.state_dict(),
                "ema_unet": ema_unet.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "args": vars(args),
            },
            tmp,
        )
        os.replace(tmp, ckpt_path)

    te.train()
    unet.train()
    steps_this_run = 0
    while step < args.max_steps:
        if deadline and time.time() > deadline:
            print("deadline reached", flush=True)
            break
        idx = torch.from_numpy(batch_for_step(step, args.seed, n, args.batch))
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        x0 = images[idx].float() / 127.5 - 1.0
        flip = torch.rand(args.batch, generator=g) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        s = shape_id[idx].clone()
        c = colour_id[idx].clone()
        s[torch.rand(args.batch, generator=g) > args.p_keep_shape] = -1
        c[torch.rand(args.batch, generator=g) > args.p_keep_colour] = -1
        cap_idx = (s + 1) * 7 + (c + 1)
        cap_idx[torch.rand(args.batch, generator=g) < args.p_empty] = len(caps) - 1
        ids = cap_ids[cap_idx]
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = ac[t].sqrt()[:, None, None, None]
        sg = (1 - ac[t]).sqrt()[:, None, None, None]
        xt = a * x0 + sg * eps
        xt, eps, t, ids = xt.to(dev), eps.to(dev), t.to(dev), ids.to(dev)

        lr = args.lr * min(1.0, (step + 1 - (args.start_step if args.init_from else 0)) / args.warmup)
        for pg in opt.param_groups:
            pg["lr"] = lr
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
            h = te(ids).last_hidden_state
            pred = unet(xt, t, encoder_hidden_states=h).sample
        per_sample = (pred.float() - eps).square().mean(dim=(1, 2, 3))
        weight = (1.0 / ac[t.cpu()]).clamp(max=args.high_noise_weight).to(dev)
        loss = (weight * per_sample).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        steps_this_run += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for m, e in ((te, ema_te), (unet, ema_unet)):
                for p, q in zip(m.parameters(), e.parameters()):
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
    prior.export(args.out, ema_te.float().cpu(), ema_unet.float().cpu(), tok)
    print("exported EMA weights to", args.out, flush=True)
    if not args.no_sample:
        import sample_prior

        sample_prior.run(args.out, args.workdir, threads=args.threads)


if __name__ == "__main__":
    main()

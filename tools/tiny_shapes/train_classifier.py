#!/usr/bin/env python3
"""Train the tiny-shapes classifier (shape head + colour head + 128-d features).

Architecture (runnable with basic kernels; see classifier/config.json):
  conv1 3->32   3x3 s1 p1, norm1 GroupNorm(8) + SiLU      32x32
  conv2 32->64  3x3 s2 p1, norm2 GroupNorm(8) + SiLU      16x16
  conv3 64->128 3x3 s2 p1, norm3 GroupNorm(8) + SiLU       8x8
  conv4 128->128 3x3 s2 p1, norm4 GroupNorm(8) + SiLU      4x4
  global average pool -> 128
  fc 128->128 + SiLU = "features"
  shape_head 128->6 = "shape_logits", colour_head 128->6 = "colour_logits"
Input: RGB in [-1,1] (x = uint8/127.5 - 1), NCHW, 32x32.

  python tools/tiny_shapes/train_classifier.py                 # train + held-out accuracy
  python tools/tiny_shapes/train_classifier.py --eval-samples /tmp/tiny_shapes_run/samples.npz
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import COLOURS, SHAPES, write_json  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GN_GROUPS = 8
GN_EPS = 1e-5


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, 1, 1)
        self.norm1 = nn.GroupNorm(GN_GROUPS, 32, eps=GN_EPS)
        self.conv2 = nn.Conv2d(32, 64, 3, 2, 1)
        self.norm2 = nn.GroupNorm(GN_GROUPS, 64, eps=GN_EPS)
        self.conv3 = nn.Conv2d(64, 128, 3, 2, 1)
        self.norm3 = nn.GroupNorm(GN_GROUPS, 128, eps=GN_EPS)
        self.conv4 = nn.Conv2d(128, 128, 3, 2, 1)
        self.norm4 = nn.GroupNorm(GN_GROUPS, 128, eps=GN_EPS)
        self.fc = nn.Linear(128, 128)
        self.shape_head = nn.Linear(128, len(SHAPES))
        self.colour_head = nn.Linear(128, len(COLOURS))

    def forward(self, x):
        x = F.silu(self.norm1(self.conv1(x)))
        x = F.silu(self.norm2(self.conv2(x)))
        x = F.silu(self.norm3(self.conv3(x)))
        x = F.silu(self.norm4(self.conv4(x)))
        x = x.mean(dim=(2, 3))
        f = F.silu(self.fc(x))
        return f, self.shape_head(f), self.colour_head(f)


def config_json(acc):
    def conv(name, cin, cout, stride, hw_out):
        return {
            "op": "conv2d",
            "name": name,
            "weight": f"{name}.weight",
            "weight_shape": [cout, cin, 3, 3],
            "bias": f"{name}.bias",
            "bias_shape": [cout],
            "kernel": 3,
            "stride": stride,
            "padding": 1,
            "output_hw": hw_out,
        }

    def gn(name, c):
        return {
            "op": "group_norm",
            "name": name,
            "weight": f"{name}.weight",
            "bias": f"{name}.bias",
            "shape": [c],
            "groups": GN_GROUPS,
            "eps": GN_EPS,
            "then": "silu",
        }

    layers = [
        conv("conv1", 3, 32, 1, 32), gn("norm1", 32),
        conv("conv2", 32, 64, 2, 16), gn("norm2", 64),
        conv("conv3", 64, 128, 2, 8), gn("norm3", 128),
        conv("conv4", 128, 128, 2, 4), gn("norm4", 128),
        {"op": "global_avg_pool", "output": [128]},
        {"op": "linear", "name": "fc", "weight": "fc.weight", "weight_shape": [128, 128], "bias": "fc.bias", "bias_shape": [128], "then": "silu", "output_name": "features"},
        {"op": "linear", "name": "shape_head", "input": "features", "weight": "shape_head.weight", "weight_shape": [len(SHAPES), 128], "bias": "shape_head.bias", "bias_shape": [len(SHAPES)], "output_name": "shape_logits"},
        {"op": "linear", "name": "colour_head", "input": "features", "weight": "colour_head.weight", "weight_shape": [len(COLOURS), 128], "bias": "colour_head.bias", "bias_shape": [len(COLOURS)], "output_name": "colour_logits"},
    ]
    return {
        "format": "fsd3d-tiny-classifier/1",
        "weights": "model.safetensors",
        "dtype": "float32",
        "input": {"shape": ["N", 3, 32, 32], "layout": "NCHW", "channels": "RGB", "range": [-1.0, 1.0], "normalisation": "x = uint8 / 127.5 - 1 (= rgb * 2 - 1), same as the diffusion model's pixels"},
        "conventions": {
            "conv2d": "PyTorch Conv2d: weight [out, in, kh, kw], cross-correlation, zero padding",
            "linear": "y = x W^T + b, W [out, in]",
            "group_norm": "PyTorch GroupNorm: per sample, per group of C/groups consecutive channels, biased variance over (C/groups, H, W), y = (x - mean)/sqrt(var + eps) * weight + bias",
            "silu": "x * sigmoid(x)",
            "global_avg_pool": "mean over H and W",
        },
        "layers": layers,
        "outputs": ["features", "shape_logits", "colour_logits"],
        "shape_labels": SHAPES,
        "colour_labels": COLOURS,
        "held_out_accuracy": acc,
    }


def to_input(u8_nhwc):
    return torch.from_numpy(np.ascontiguousarray(u8_nhwc)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def predict(model, u8_nhwc, bs=500):
    model.eval()
    out = [[], [], []]
    for i in range(0, len(u8_nhwc), bs):
        f, s, c = model(to_input(u8_nhwc[i : i + bs]))
        out[0].append(f)
        out[1].append(s)
        out[2].append(c)
    return [torch.cat(o) for o in out]


def load_classifier(path):
    from safetensors.torch import load_file

    m = Classifier()
    m.load_state_dict(load_file(path))
    return m.eval()


def eval_samples(model, path):
    d = np.load(path)
    _, s, c = predict(model, d["images"])
    sp, cp = s.argmax(1).numpy(), c.argmax(1).numpy()
    ok_s = sp == d["shape_id"]
    ok_c = cp == d["colour_id"]
    n = len(sp)
    print(f"samples: {n}; shape right {ok_s.sum()}/{n}, colour right {ok_c.sum()}/{n}, both {(ok_s & ok_c).sum()}/{n}")
    prompts = d["prompts"]
    per = {}
    for i in range(n):
        per.setdefault(str(prompts[i]), []).append(bool(ok_s[i] and ok_c[i]))
    any_ok = sum(any(v) for v in per.values())
    first_ok = sum(v[0] for v in per.values())
    print(f"prompts with seed-0 sample fully right: {first_ok}/{len(per)}; with any seed right: {any_ok}/{len(per)}")
    for p, v in per.items():
        if not all(v):
            idx = [i for i in range(n) if str(prompts[i]) == p]
            got = [f"{COLOURS[cp[i]]} {SHAPES[sp[i]]}" for i in idx]
            print(f"  {p!r}: {v} -> classifier says {got}")
    if "red_images" in d:
        _, s2, c2 = predict(model, d["red_images"])
        cc = c2.argmax(1).numpy()
        print(f"'a red object': colour red {int((cc == 0).sum())}/16; shapes {[SHAPES[k] for k in s2.argmax(1).numpy()]}")
    return {
        "n": int(n),
        "shape_right": int(ok_s.sum()),
        "colour_right": int(ok_c.sum()),
        "both_right": int((ok_s & ok_c).sum()),
        "prompts_seed0_right": int(first_ok),
        "prompts_any_right": int(any_ok),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/tmp/tiny_shapes_data/train.npz")
    ap.add_argument("--test", default="/tmp/tiny_shapes_data/test.npz")
    ap.add_argument("--out", default=os.path.join(REPO, "weights", "tiny-shapes", "classifier"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--eval-samples", default=None, help="only evaluate the saved classifier on sample_prior.py's samples.npz")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.eval_samples:
        m = load_classifier(os.path.join(args.out, "model.safetensors"))
        r = eval_samples(m, args.eval_samples)
        print(json.dumps(r))
        return

    torch.manual_seed(args.seed)
    d = np.load(args.data)
    X = d["images"]
    ys = torch.from_numpy(d["shape_id"])
    yc = torch.from_numpy(d["colour_id"])
    n = len(X)
    model = Classifier()
    steps_per_epoch = n // args.batch
    total = steps_per_epoch * args.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=0.1)
    t0 = time.time()
    step = 0
    for ep in range(args.epochs):
        model.train()
        perm = np.random.default_rng([args.seed, ep]).permutation(n)
        for k in range(steps_per_epoch):
            idx = perm[k * args.batch : (k + 1) * args.batch]
            g = torch.Generator().manual_seed(args.seed * 7919 + step)
            x = to_input(X[idx])
            flip = torch.rand(len(idx), generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            # light augmentation: small pixel noise, so near-clean diffusion samples stay in distribution
            x = x + 0.05 * torch.rand(len(idx), 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
            _, s, c = model(x)
            loss = F.cross_entropy(s, ys[idx]) + F.cross_entropy(c, yc[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 50 == 0:
                print(f"epoch {ep} step {step}/{total} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)

    t = np.load(args.test)
    _, s, c = predict(model, t["images"])
    acc_s = float((s.argmax(1).numpy() == t["shape_id"]).mean())
    acc_c = float((c.argmax(1).numpy() == t["colour_id"]).mean())
    acc_b = float(((s.argmax(1).numpy() == t["shape_id"]) & (c.argmax(1).numpy() == t["colour_id"])).mean())
    acc = {"test_set": "render_dataset.py --n 4000 --seed 1", "n": int(len(t["images"])), "shape": acc_s, "colour": acc_c, "both": acc_b}
    print("held-out accuracy", acc, f"train time {time.time() - t0:.0f}s")
    # confusion of shapes
    conf = np.zeros((6, 6), int)
    for a, b in zip(t["shape_id"], s.argmax(1).numpy()):
        conf[a, b] += 1
    print("shape confusion (rows true, cols predicted)", SHAPES)
    print(conf)

    from safetensors.torch import save_file

    os.makedirs(args.out, exist_ok=True)
    sd = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    cfg = config_json(acc)
    cfg["training"] = {"epochs": args.epochs, "batch": args.batch, "lr": args.lr, "seed": args.seed, "threads": args.threads, "seconds": round(time.time() - t0)}
    write_json(os.path.join(args.out, "config.json"), cfg)
    print("saved", args.out)


if __name__ == "__main__":
    main()

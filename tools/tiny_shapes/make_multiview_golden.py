#!/usr/bin/env python3
"""Golden outputs of the shipped 4-view prior (weights/tiny-shapes-4view) for the Rust parity test.

Writes tests/fixtures/tiny_shapes_4view/golden.safetensors (f32, ~0.5 MB):
  unet.sample                 f32 [8,3,32,32]  torch.Generator().manual_seed(4321) randn: 2 objects x 4 views
  unet.timesteps              f32 [8]          one timestep an object: [900]*4 + [150]*4
  unet.camera                 f32 [8,16]       multiview.mvdream_camera: object 0 at elevation 20, azimuths
                                               -30, 60, 150, 240; object 1 at elevation 0, azimuths 10, 100, 190, 280
  unet.encoder_hidden_states  f32 [8,77,64]    text encoder states of "a red cube" (object 0), "" (object 1)
  unet.output                 f32 [8,3,32,32]  multiview.forward(..., frames=4): PyTorch's MVDream-style UNet
  unet.output_frames1         f32 [8,3,32,32]  the same with frames=1 (self-attention within each view)

The reference is diffusers' UNet2DConditionModel with the camera as its
projection class embedding and the cross-view attention processor of
multiview.py, in float32 on CPU.
"""

import argparse
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import multiview  # noqa: E402
import prior  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(REPO, "weights", "tiny-shapes-4view"))
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "tiny_shapes_4view", "golden.safetensors"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    te, unet, procs, tok = multiview.load(args.model)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(4321))
    t = torch.tensor([900.0] * 4 + [150.0] * 4)
    el = np.array([[20.0] * 4, [0.0] * 4])
    az = np.array([[-30.0, 60.0, 150.0, 240.0], [10.0, 100.0, 190.0, 280.0]])
    cam = torch.from_numpy(multiview.mvdream_camera(el, az).reshape(8, 16))
    with torch.no_grad():
        ctx = te(prior.tokenize(tok, ["a red cube", ""])).last_hidden_state.repeat_interleave(4, 0)
        out = multiview.forward(unet, procs, x, t, ctx, cam, 4)
        out1 = multiview.forward(unet, procs, x, t, ctx, cam, 1)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    tensors = {
        "unet.sample": x,
        "unet.timesteps": t,
        "unet.camera": cam,
        "unet.encoder_hidden_states": ctx,
        "unet.output": out,
        "unet.output_frames1": out1,
    }
    save_file({k: v.float().contiguous() for k, v in tensors.items()}, args.out)
    print("wrote", args.out, "| frames 4 vs 1 differ by", (out - out1).abs().max().item())


if __name__ == "__main__":
    main()

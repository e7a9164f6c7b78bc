#!/usr/bin/env python3
"""Convert a single-file PyTorch checkpoint (.pt / .ckpt / .pth: MVDream's
sd-v2.1-base-4view.pt, Stable Diffusion's v1-5-pruned-emaonly.ckpt) to
.safetensors, which fsd3d reads.

fsd3d never reads pickle files: a pickle can run any code when it is loaded.
This script loads the checkpoint with torch.load(weights_only=True), PyTorch's
restricted unpickler, which only rebuilds tensors and plain containers and
refuses everything else; a file that needs more than that is refused here too.

It keeps every tensor under its own name (the original LDM names: fsd3d maps
them itself), unwraps a top-level "state_dict" (LDM training checkpoints),
keeps the dtype (f32 / f16 / bf16) unless --dtype says otherwise, and copies
the model's config YAML beside the output with the same stem, where
`fsd3d ... --model <out>.safetensors` looks for it.

    python tools/convert_ldm_checkpoint.py sd-v2.1-base-4view.pt \\
        --config MVDream/mvdream/configs/sd-v2-base.yaml --out models/sd-v2.1-base-4view.safetensors

MVDream's configs are in its repository (github.com/bytedance/MVDream,
mvdream/configs/): sd-v2-base.yaml for sd-v2.1-base-4view.pt, sd-v1.yaml for
sd-v1.5-4view.pt.
"""

import argparse
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

DTYPES = {"keep": None, "f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def state_dict_of(obj, path):
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        sys.exit(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    skipped = sorted(k for k in obj if k not in tensors)
    if not tensors:
        sys.exit(f"{path}: no tensors at the top level (or under 'state_dict')")
    return tensors, skipped


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help=".pt / .ckpt / .pth file")
    ap.add_argument("--config", help="the model's LDM config YAML, copied beside the output (sd-v2-base.yaml, v1-inference.yaml, ...)")
    ap.add_argument("--out", help="output .safetensors (default: the checkpoint's name with .safetensors)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="keep", help="convert floating-point tensors (default: keep each as stored)")
    args = ap.parse_args()

    out = args.out or os.path.splitext(args.checkpoint)[0] + ".safetensors"
    if not out.endswith(".safetensors"):
        sys.exit(f"--out {out}: the output must end in .safetensors")
    try:
        obj = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # the restricted unpickler's refusal says what it met
        sys.exit(f"{args.checkpoint}: not loadable as weights only ({e}); fsd3d does not run pickle code")
    tensors, skipped = state_dict_of(obj, args.checkpoint)
    want = DTYPES[args.dtype]
    converted = {}
    for k, v in tensors.items():
        if want is not None and v.is_floating_point():
            v = v.to(want)
        # clone: safetensors refuses tensors that share storage.
        converted[k] = v.detach().contiguous().clone()
    tmp = out + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_file(converted, tmp, metadata={"converted_from": os.path.basename(args.checkpoint)})
    os.replace(tmp, out)
    print(f"wrote {out}: {len(converted)} tensors" + (f"; left out {len(skipped)} non-tensor entries: {', '.join(skipped[:5])}" if skipped else ""))
    if args.config:
        yaml = os.path.splitext(out)[0] + ".yaml"
        if os.path.abspath(args.config) != os.path.abspath(yaml):
            shutil.copyfile(args.config, yaml)
        print(f"config: {yaml}")


if __name__ == "__main__":
    main()

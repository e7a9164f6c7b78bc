"""Convert pytorch-fid's FID Inception-v3 weights to safetensors for the engine.

pytorch-fid publishes the TensorFlow FID Inception (inception-2015-12-05) ported
to PyTorch as pt_inception-2015-12-05-6726825d.pth, at
pytorch_fid.inception.FID_WEIGHTS_URL:
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
Download it yourself, then:

    python tools/convert_inception.py pt_inception-2015-12-05-6726825d.pth inception-2015-12-05.safetensors

The output keeps the state dict's tensor names (Conv2d_1a_3x3.conv.weight,
Conv2d_1a_3x3.bn.running_var, ..., Mixed_7c.branch_pool.bn.bias, fc.weight,
fc.bias), as float32, contiguous, without the BatchNorm num_batches_tracked
counters (safetensors stores the tensors sorted by name, not in state-dict
order; tests/fixtures/models/inception/params.json has that order). Only torch
and safetensors are needed.
"""
import argparse

import torch
from safetensors.torch import save_file


def convert(src, dst):
    sd = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise SystemExit(f"{src}: expected a state dict, got {type(sd).__name__}")
    out = {}
    for name, t in sd.items():
        if name.endswith("num_batches_tracked"):
            continue
        if not torch.is_tensor(t) or not t.is_floating_point():
            raise SystemExit(f"{src}: {name} is not a float tensor")
        out[name] = t.detach().to(torch.float32).contiguous()
    fc = out.get("fc.weight")
    if fc is None or tuple(fc.shape) != (1008, 2048):
        raise SystemExit(f"{src}: fc.weight is {None if fc is None else list(fc.shape)}, expected [1008, 2048]")
    save_file(out, dst, metadata={"source": "pytorch-fid pt_inception-2015-12-05-6726825d.pth"})
    n = sum(t.numel() for t in out.values())
    print(f"wrote {dst}: {len(out)} tensors, {n / 1e6:.2f} M values (dropped {len(sd) - len(out)} "
          f"num_batches_tracked), fc.weight {list(fc.shape)}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="pt_inception-2015-12-05-6726825d.pth")
    ap.add_argument("dst", help="output .safetensors")
    args = ap.parse_args()
    convert(args.src, args.dst)


if __name__ == "__main__":
    main()

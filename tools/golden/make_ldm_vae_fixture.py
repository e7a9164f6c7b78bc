"""Golden fixture for single-file checkpoints' VAE: a tiny random-weight
`AutoencoderKL` built and run by the original latent-diffusion code as
MVDream's repository carries it (github.com/bytedance/MVDream,
mvdream/ldm/models/autoencoder.py and ldm/modules/diffusionmodules/model.py),
saved with the key names of a single-file checkpoint (`first_stage_model.*`).

As tools/golden/make_mvdream_unet_fixture.py, the only stub is an empty
stand-in for the top-level `mvdream` package (its __init__ pulls in
huggingface_hub and open_clip); the autoencoder modules are imported as they
are. xformers is switched off so the plain `AttnBlock` (1x1-conv q, k, v,
proj_out) is what runs and what the checkpoint holds.

    OMP_NUM_THREADS=1 python tools/golden/make_ldm_vae_fixture.py --mvdream-repo /tmp/MVDream

Writes tests/fixtures/ldm/vae_tiny/:
- model.safetensors: every parameter, keys `first_stage_model.<name>`, f16
  (the weights are rounded to f16 before the outputs are computed, so the
  file holds exactly the model that made them).
  Built with seed 0, then randn*0.05 added to every parameter (seed 1) so no
  layer is at its initial value. Two levels (32 and 64 channels): the
  decoder's `up.{i}` runs from the last level to the first, which diffusers
  numbers the other way round.
- config.yaml: model.params.scale_factor and first_stage_config as
  configs/sd-v2-base.yaml writes them, with the tiny ddconfig (TINY below).
- io.safetensors: `image` [2,3,24,40] in [-1, 1] (seed 2); `mean`, `logvar`
  [2,4,12,20]: the posterior of encode(image); `latents` [2,4,12,20] (seed 3) and
  `decoded` [2,3,24,40] = decode(latents) (no scale factor applied: LDM's
  decode takes the unscaled latent).
"""
import argparse
import importlib
import os
import sys
import types

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "ldm", "vae_tiny")
PREFIX = "first_stage_model."
# sd-v2-base.yaml's ddconfig, shrunk. Normalize() uses 32 groups, so channels are multiples of 32.
TINY = dict(double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2], num_res_blocks=1,
            attn_resolutions=[], dropout=0.0)
EMBED_DIM = 4
SCALE_FACTOR = 0.18215


def import_autoencoder(repo):
    pkg_dir = os.path.join(repo, "mvdream")
    stub = types.ModuleType("mvdream")
    stub.__path__ = [pkg_dir]
    stub.__file__ = os.path.join(pkg_dir, "__init__.py")
    sys.modules["mvdream"] = stub
    model = importlib.import_module("mvdream.ldm.modules.diffusionmodules.model")
    model.XFORMERS_IS_AVAILBLE = False
    return importlib.import_module("mvdream.ldm.models.autoencoder"), model


def config_yaml():
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(str(x) for x in v) + "]"
        return str(v)

    dd = "\n".join(f"          {k}: {val(v)}" for k, v in TINY.items())
    return f"""# tests/fixtures/ldm/vae_tiny: the first_stage_config of MVDream's configs/sd-v2-base.yaml
# with a tiny ddconfig (written by tools/golden/make_ldm_vae_fixture.py).
model:
  target: mvdream.ldm.interface.LatentDiffusionInterface
  params:
    scale_factor: {SCALE_FACTOR}
    first_stage_config:
      target: mvdream.ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: {EMBED_DIM}
        monitor: val/rec_loss
        ddconfig:
{dd}
        lossconfig:
          target: torch.nn.Identity
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mvdream-repo", required=True)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    autoencoder, model = import_autoencoder(os.path.abspath(args.mvdream_repo))
    torch.manual_seed(0)
    vae = autoencoder.AutoencoderKL(ddconfig=dict(TINY), lossconfig={"target": "torch.nn.Identity"}, embed_dim=EMBED_DIM)
    assert type(vae.encoder.mid.attn_1).__name__ == "AttnBlock", type(vae.encoder.mid.attn_1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
            # Exactly representable in f16, which the file stores (half the size).
            p.copy_(p.half().float())
    vae.eval()
    image = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(2)) * 2 - 1
    latents = torch.randn(2, EMBED_DIM, 12, 20, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        post = vae.encode(image)
        decoded = vae.decode(latents)
    sd = {PREFIX + k: v.detach().half().contiguous() for k, v in vae.state_dict().items()}
    save_file(sd, os.path.join(args.out, "model.safetensors"))
    with open(os.path.join(args.out, "config.yaml"), "w") as f:
        f.write(config_yaml())
    io = {"image": image, "mean": post.mean, "logvar": post.logvar, "latents": latents, "decoded": decoded}
    save_file({k: v.detach().float().contiguous() for k, v in io.items()}, os.path.join(args.out, "io.safetensors"))
    print(f"wrote {args.out}: {len(sd)} tensors; |decoded| max {decoded.abs().max():.3f}, |mean| max {post.mean.abs().max():.3f}")


if __name__ == "__main__":
    main()

"""Golden fixture for MVDream's multi-view UNet: a tiny random-weight
`MultiViewUNetModel` built and run by the authors' own code
(github.com/bytedance/MVDream, mvdream/ldm/modules/diffusionmodules/openaimodel.py),
saved with the key names of the released single-file checkpoint
(`model.diffusion_model.*`, as sd-v2.1-base-4view.pt holds them), plus the
LDM -> diffusers key map that diffusers' own single-file converter produces.

Nothing here re-implements MVDream. The `mvdream` package is not on PyPI and
its `__init__` imports `model_zoo` (pkg_resources, huggingface_hub, and through
the config the open_clip text encoder), so this script puts an empty stand-in
for the top-level `mvdream` package into sys.modules (a bare module whose
__path__ is the clone's mvdream/ folder) and then imports
`mvdream.ldm.modules.diffusionmodules.openaimodel` normally; that is the only
stub. The ldm/, ldm/modules/ and ldm/modules/diffusionmodules/ __init__ files
are empty and run as they are. The code needs torch, numpy, einops and (for
`context_dim`) omegaconf. Attention: attention.py uses xformers when it
imports, else its plain `CrossAttention` ("softmax"); this script forces the
latter (attention.XFORMERS_IS_AVAILBLE = False before the model is built) and
asserts every transformer block got `CrossAttention`.

    git clone https://github.com/bytedance/MVDream /tmp/MVDream
    OMP_NUM_THREADS=1 python tools/golden/make_mvdream_unet_fixture.py --mvdream-repo /tmp/MVDream

(In a git clone the commit is read with `git rev-parse HEAD`; otherwise pass
`--source-commit`. Written against 618f84476c88e04adaf588133be2830142b9956d.)
Needs torch, einops, omegaconf, safetensors, numpy, PyYAML and diffusers
(0.42.1 was used) for the key map.

Writes tests/fixtures/mvdream/unet_tiny/:
- model.safetensors: every parameter of the tiny UNet, keys
  `model.diffusion_model.<name>` (f32). The model is built with seed 0 and then
  every parameter gets randn*0.05 added (seed 1), so the zero-initialised
  layers (out_layers.3, proj_out, out.2) are non-zero too.
- config.yaml: configs/sd-v2-base.yaml with the unet_config params replaced
  by the tiny ones (TINY below). first_stage_config / cond_stage_config are
  left as the real model's; they are not in model.safetensors.
- inputs_unet.safetensors: `sample` [8,4,8,8], `timestep` [8], `encoder_hidden_states`
  [8,77,32], `camera` [8,16], `num_frames` [1] = 4 (all f32). Two objects x 4
  views, view-inner (index = object*4 + view). Timesteps 999 for object 0, 10
  for object 1. camera = get_camera(4, elevation=15, azimuth_start=0) for object 0,
  get_camera(4, elevation=30, azimuth_start=37) for object 1 (the authors'
  camera_utils.py). The forward call is
  `unet(sample, timestep.long(), context=encoder_hidden_states, camera=camera, num_frames=4)`
  (the authors' DDIM sampler passes long timesteps; the model casts them to f32).
- outputs_unet.safetensors: `sample` [8,4,8,8].
- inputs_unet_single / outputs_unet_single.safetensors: the first 2 items with
  num_frames=1 and camera=None (no `camera` tensor; `num_frames` [1] = 1).
  With num_frames 1 the model is a plain SD-2 UNet (its camera_embed unused),
  so the script also runs diffusers' UNet2DConditionModel on the converted
  weights there and prints the difference.
- ldm_to_diffusers.json: a JSON list of [ldm_key, diffusers_key] pairs, one per
  tensor of model.safetensors (ldm_key with the `model.diffusion_model.`
  prefix), sorted by ldm_key, as diffusers'
  `loaders.single_file_utils.convert_ldm_unet_checkpoint` maps them
  (established by object identity of the tensors the converter returns; the
  converter copies tensors, never splits or merges them). diffusers_key is
  null for checkpoint tensors the converter drops (MVDream's `camera_embed.*`).
  The diffusers config comes from
  `create_unet_diffusers_config_from_ldm(config.yaml, checkpoint)` with
  sample_size set to 8 by hand (the function guesses the image size from the
  key names).
"""
import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import types

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "mvdream", "unet_tiny")
UPSTREAM = "https://github.com/bytedance/MVDream"
WRITTEN_AGAINST = "618f84476c88e04adaf588133be2830142b9956d"
PREFIX = "model.diffusion_model."
TARGET = "mvdream.ldm.modules.diffusionmodules.openaimodel.MultiViewUNetModel"

# configs/sd-v2-base.yaml's unet_config.params, shrunk. GroupNorm32 uses 32
# groups (util.normalization), so every channel count (32, 64, and the skip
# concatenations 64, 96, 128) is a multiple of 32. num_head_channels 8 gives
# 4 heads at level 0 and 8 at level 1; attention at both levels (ds 1 and 2).
# That is 1,073,732 parameters (model.safetensors 4.3 MB). channel_mult [1, 1]
# would be 450,180 (1.8 MB) but loses the per-level head counts (diffusers'
# attention_head_dim [4, 8]) and the input-side skip convs.
TINY = dict(
    image_size=8,  # unused by the model
    in_channels=4,
    out_channels=4,
    model_channels=32,
    attention_resolutions=[1, 2],
    num_res_blocks=1,
    channel_mult=[1, 2],
    num_head_channels=8,
    use_spatial_transformer=True,
    use_linear_in_transformer=True,
    transformer_depth=1,
    context_dim=32,
    use_checkpoint=False,
    legacy=False,
    camera_dim=16,
)
NUM_FRAMES = 4
TIMESTEPS = [999] * 4 + [10] * 4
CAMERAS = [dict(elevation=15, azimuth_start=0), dict(elevation=30, azimuth_start=37)]


def git_commit(repo):
    try:
        return subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def import_mvdream(repo):
    """The authors' openaimodel, attention and camera_utils modules, without running mvdream/__init__.py."""
    pkg_dir = os.path.join(repo, "mvdream")
    if not os.path.isfile(os.path.join(pkg_dir, "ldm", "modules", "diffusionmodules", "openaimodel.py")):
        raise SystemExit(f"no mvdream/ldm/modules/diffusionmodules/openaimodel.py under {repo}: "
                         f"pass --mvdream-repo <clone of {UPSTREAM}>")
    if "mvdream" in sys.modules:
        raise SystemExit("an `mvdream` module is already imported")
    stub = types.ModuleType("mvdream")  # stands in for mvdream/__init__.py (from .model_zoo import build_model)
    stub.__path__ = [pkg_dir]
    stub.__file__ = os.path.join(pkg_dir, "__init__.py")
    sys.modules["mvdream"] = stub
    attention = importlib.import_module("mvdream.ldm.modules.attention")
    print(f"xformers importable: {attention.XFORMERS_IS_AVAILBLE}; forcing the plain CrossAttention path")
    attention.XFORMERS_IS_AVAILBLE = False
    openaimodel = importlib.import_module("mvdream.ldm.modules.diffusionmodules.openaimodel")
    dm_util = importlib.import_module("mvdream.ldm.modules.diffusionmodules.util")
    camera_utils = importlib.import_module("mvdream.camera_utils")
    return attention, openaimodel, dm_util, camera_utils


def perturb(model, seed, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def tiny_config_yaml(repo):
    """configs/sd-v2-base.yaml as text with the unet_config params block replaced by TINY."""
    with open(os.path.join(repo, "mvdream", "configs", "sd-v2-base.yaml")) as f:
        text = f.read()
    lines = text.split("\n")
    start = next(i for i, l in enumerate(lines) if l.strip() == "unet_config:")
    assert lines[start + 1].strip() == f"target: {TARGET}", lines[start + 1]
    assert lines[start + 2].strip() == "params:", lines[start + 2]
    indent = " " * (len(lines[start + 2]) - len(lines[start + 2].lstrip()) + 2)
    end = start + 3
    while end < len(lines) and (lines[end].startswith(indent) or not lines[end].strip()):
        end += 1
    while not lines[end - 1].strip():
        end -= 1

    def val(v):
        if isinstance(v, bool):
            return "True" if v else "False"
        if isinstance(v, list):
            return "[ " + ", ".join(str(x) for x in v) + " ]"
        return str(v)

    block = [f"{indent}{k}: {val(v)}" for k, v in TINY.items()]
    header = ("# tests/fixtures/mvdream/unet_tiny: MVDream's configs/sd-v2-base.yaml with a tiny unet_config\n"
              "# (written by tools/golden/make_mvdream_unet_fixture.py). Only the UNet is in model.safetensors;\n"
              "# first_stage_config and cond_stage_config are the real model's, for layout only.\n")
    return header + "\n".join(lines[:start + 3] + block + lines[end:])


def f32(t):
    return t.detach().float().contiguous()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mvdream-repo", required=True, help=f"a clone of {UPSTREAM}")
    ap.add_argument("--source-commit", default=None, help="commit of the clone (default: git rev-parse HEAD)")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    repo = os.path.abspath(args.mvdream_repo)
    commit = args.source_commit or git_commit(repo) or "unknown"
    if commit != WRITTEN_AGAINST:
        print(f"note: clone is at {commit}; this script was written against {WRITTEN_AGAINST}")
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)

    attention, openaimodel, dm_util, camera_utils = import_mvdream(repo)

    # The config file first, then the model from it through the authors' instantiate_from_config.
    cfg_text = tiny_config_yaml(repo)
    cfg = yaml.safe_load(cfg_text)
    unet_cfg = cfg["model"]["params"]["unet_config"]
    assert unet_cfg["target"] == TARGET and unet_cfg["params"] == TINY, unet_cfg
    with open(os.path.join(args.out, "config.yaml"), "w") as f:
        f.write(cfg_text)

    torch.manual_seed(0)
    unet = dm_util.instantiate_from_config(unet_cfg)
    assert type(unet) is openaimodel.MultiViewUNetModel
    perturb(unet, seed=1)
    blocks = [m for m in unet.modules() if isinstance(m, attention.BasicTransformerBlock)]
    assert blocks and all(type(b.attn1) is attention.CrossAttention and type(b.attn2) is attention.CrossAttention
                          for b in blocks)
    assert all(type(b) is attention.BasicTransformerBlock3D for b in blocks)
    print(f"{len(blocks)} BasicTransformerBlock3D, attention class CrossAttention (no xformers); "
          f"ATTN_PRECISION={attention._ATTN_PRECISION}")

    sd = {PREFIX + k: f32(v) for k, v in unet.state_dict().items()}
    n_params = sum(v.numel() for v in sd.values())
    assert all(v.abs().max() > 0 for v in sd.values())
    # One metadata key: safetensors writes several in a random order, and the files should be byte-reproducible.
    meta = {"source": f"{UPSTREAM} @ {commit}, by tools/golden/make_mvdream_unet_fixture.py"}
    save_file(sd, os.path.join(args.out, "model.safetensors"), metadata=meta)
    print(f"{len(sd)} tensors, {n_params} parameters")

    # Inputs.
    g = torch.Generator().manual_seed(2)
    n = len(CAMERAS) * NUM_FRAMES
    sample = torch.randn(n, TINY["in_channels"], TINY["image_size"], TINY["image_size"], generator=g)
    ehs = torch.randn(n, 77, TINY["context_dim"], generator=g)
    timestep = torch.tensor(TIMESTEPS, dtype=torch.long)
    camera = torch.cat([camera_utils.get_camera(NUM_FRAMES, **c) for c in CAMERAS], 0)
    assert camera.shape == (n, 16) and camera.dtype == torch.float32

    with torch.no_grad():
        out = unet(sample, timestep, context=ehs, camera=camera, num_frames=NUM_FRAMES)
        # Sanity: the views of an object attend to each other (changing view 1 moves view 0's output)
        # and objects do not (changing object 1 leaves object 0 alone).
        s2 = sample.clone()
        s2[1] += 1.0
        s2[5] += 1.0
        out2 = unet(s2, timestep, context=ehs, camera=camera, num_frames=NUM_FRAMES)
        s3 = sample.clone()
        s3[4:] += 1.0
        out3 = unet(s3, timestep, context=ehs, camera=camera, num_frames=NUM_FRAMES)
        out_nocam = unet(sample, timestep, context=ehs, camera=None, num_frames=NUM_FRAMES)
    assert (out2[0] - out[0]).abs().max() > 1e-4, "views do not interact"
    assert torch.equal(out3[:4], out[:4]) or (out3[:4] - out[:4]).abs().max() < 1e-6, "objects interact"
    print(f"multi-view output: shape {tuple(out.shape)}, std {out.std().item():.6f}, "
          f"mean {out.mean().item():.6f}, max|.| {out.abs().max().item():.6f}")
    print(f"  view 1 perturbed -> view 0 output moves by {(out2[0] - out[0]).abs().max().item():.3e}; "
          f"object 1 perturbed -> object 0 moves by {(out3[:4] - out[:4]).abs().max().item():.3e}; "
          f"camera=None changes output by {(out_nocam - out).abs().max().item():.3e}")
    save_file({"sample": f32(sample), "timestep": f32(timestep), "encoder_hidden_states": f32(ehs),
               "camera": f32(camera), "num_frames": torch.tensor([float(NUM_FRAMES)])},
              os.path.join(args.out, "inputs_unet.safetensors"), metadata=meta)
    save_file({"sample": f32(out)}, os.path.join(args.out, "outputs_unet.safetensors"), metadata=meta)

    with torch.no_grad():
        out1 = unet(sample[:2], timestep[:2], context=ehs[:2], camera=None, num_frames=1)
    print(f"single-view output (num_frames=1, camera=None): shape {tuple(out1.shape)}, std {out1.std().item():.6f}")
    save_file({"sample": f32(sample[:2]), "timestep": f32(timestep[:2]), "encoder_hidden_states": f32(ehs[:2]),
               "num_frames": torch.tensor([1.0])},
              os.path.join(args.out, "inputs_unet_single.safetensors"), metadata=meta)
    save_file({"sample": f32(out1)}, os.path.join(args.out, "outputs_unet_single.safetensors"), metadata=meta)

    key_map(cfg, sd, sample[:2], timestep[:2], ehs[:2], out1, args.out)

    total = 0
    for name in sorted(os.listdir(args.out)):
        size = os.path.getsize(os.path.join(args.out, name))
        total += size
        print(f"  {size:9d}  {name}")
    print(f"  {total:9d}  total in {os.path.normpath(args.out)}")
    if total >= 1 << 20:
        print("  (over 1 MB: with 32 GroupNorm groups the smallest two-level UNet with attention at both levels is "
              "channel_mult [1, 1], about 1.8 MB of f32 weights; [1, 2] keeps distinct widths and head counts per level)")


def key_map(cfg, sd, sample, timestep, ehs, ref, out_dir):
    import diffusers
    from diffusers import UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu

    print(f"diffusers {diffusers.__version__}")
    ckpt = dict(sd)
    dcfg = sfu.create_unet_diffusers_config_from_ldm(cfg, ckpt)
    print(f"create_unet_diffusers_config_from_ldm guessed sample_size {dcfg['sample_size']}; set to {TINY['image_size']}")
    dcfg["sample_size"] = TINY["image_size"]
    print(f"diffusers config: {dcfg}")
    conv = sfu.convert_ldm_unet_checkpoint(ckpt, dcfg)

    by_id = {}
    for k, v in sd.items():
        by_id.setdefault(id(v), []).append(k)
    pairs, used = [], set()
    for dk, v in conv.items():
        srcs = by_id.get(id(v))
        if srcs is None:  # not an identical object: look for equal values (a reshaped or copied tensor)
            srcs = [k for k, s in sd.items() if s.shape == v.shape and torch.equal(s, v)]
            print(f"  {dk}: not a checkpoint tensor object; equal-valued: {srcs}")
        assert len(srcs) == 1, (dk, srcs)
        pairs.append([srcs[0], dk])
        used.add(srcs[0])
    dks = [dk for _, dk in pairs]
    assert len(set(dks)) == len(dks)
    multi = [k for k in used if sum(1 for p in pairs if p[0] == k) > 1]
    dropped = sorted(k for k in sd if k not in used)
    print(f"converter: {len(conv)} diffusers tensors from {len(sd)} checkpoint tensors; "
          f"dropped {dropped}; checkpoint tensors used twice {multi}")
    pairs += [[k, None] for k in dropped]
    pairs.sort(key=lambda p: p[0])
    with open(os.path.join(out_dir, "ldm_to_diffusers.json"), "w") as f:
        f.write("[\n" + ",\n".join(json.dumps(p) for p in pairs) + "\n]\n")

    model = UNet2DConditionModel(**dcfg)
    res = model.load_state_dict(conv, strict=False)
    print(f"UNet2DConditionModel.load_state_dict(strict=False): missing {res.missing_keys}, "
          f"unexpected {res.unexpected_keys}")
    model.eval()
    with torch.no_grad():
        y = model(sample, timestep, encoder_hidden_states=ehs).sample
    print(f"diffusers UNet2DConditionModel vs authors' MultiViewUNetModel (num_frames=1, camera=None): "
          f"max|diff| {(y - ref).abs().max().item():.3e}")


if __name__ == "__main__":
    main()

"""Golden fixture for the UNet's backward pass to its input: torch autograd
on the tiny diffusers UNets of tests/fixtures/models/{sd1_unet,sd2_unet}
(SD 1.x style: 1x1-conv projections, one head count, three levels; SD 2.x
style: linear projections, a head count per level), in float64.

For L = sum(unet(sample, t, ctx) * sample_out_grad), writes into each folder
grad_io.safetensors with the inputs `sample`, `timestep`,
`encoder_hidden_states`, `sample_out_grad` (the file `fsd3d forward --module
unet` reads) and the outputs `expected_sample` (the UNet's output) and
`expected_sample_grad` (dL/dsample), all f32. Awkward sizes: batch 2 and 3,
sides 12x8 and 10x6, 9 context tokens.

Each diffusers UNet also gets grad_lora_io.safetensors: the same inputs
with a LoRA adapter on every attention projection (to_q, to_k, to_v,
to_out.0; rank 4, alpha 8, so the delta is 2·(x·Aᵀ)·Bᵀ, written out here in
torch; A and B random with std 0.05) and a camera condition as
threestudio's ProlificDreamer sets it (a TimestepEmbedding(16, temb) as the
class embedding, given `camera` [B, 16]), as `lora.<projection>.A` / `.B`,
`lora.camera_embedding.linear_{1,2}.{weight,bias}`, `lora_alpha` and
`camera`, and the expected `expected_sample`, `expected_sample_grad`,
`expected_lora_grad.<projection>.A` / `.B` and
`expected_lora_grad.camera_embedding.*`.

With --mvdream-repo (a clone of github.com/bytedance/MVDream), also the
authors' MultiViewUNetModel of tests/fixtures/mvdream/unet_tiny, in float64,
for 2 objects x 4 views with cameras (self-attention across an object's
views): grad_io.safetensors there also holds `camera` and `num_frames`.

    OMP_NUM_THREADS=1 /work/venv/bin/python tools/golden/make_unet_grad_fixture.py --mvdream-repo /tmp/MVDream
"""
import argparse
import os
import sys

import torch
import yaml
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
CASES = {"sd1_unet": dict(seed=11, batch=2, hw=(12, 8)), "sd2_unet": dict(seed=12, batch=3, hw=(10, 6))}


def mvdream_case(repo):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import make_mvdream_unet_fixture as fx
    from safetensors.torch import load_file
    attention, _, dm_util, camera_utils = fx.import_mvdream(repo)
    # The authors' code upcasts to float32 in two places (GroupNorm32, and q, k
    # under ATTN_PRECISION "fp32"); for a float64 reference both keep the
    # input's precision instead (the same computation).
    dm_util.GroupNorm32.forward = lambda self, x: torch.nn.GroupNorm.forward(self, x)
    attention._ATTN_PRECISION = "fp64"
    d = os.path.join(ROOT, "tests", "fixtures", "mvdream", "unet_tiny")
    with open(os.path.join(d, "config.yaml")) as f:
        cfg = yaml.safe_load(f)["model"]["params"]["unet_config"]
    unet = dm_util.instantiate_from_config(cfg)
    prefix = "model.diffusion_model."
    unet.load_state_dict({k[len(prefix):]: v for k, v in load_file(os.path.join(d, "model.safetensors")).items()})
    unet = unet.double().eval()
    unet.dtype = torch.float64  # the type its forward casts the input to
    # The authors' sinusoidal timestep embedding is always float32: cast it
    # on the way into the (float64) time MLP.
    unet.time_embed.register_forward_pre_hook(lambda module, args: (args[0].double(),))
    g = torch.Generator().manual_seed(13)
    frames, n = fx.NUM_FRAMES, 2 * fx.NUM_FRAMES
    p = cfg["params"]
    sample = torch.randn(n, p["in_channels"], 8, 8, generator=g, dtype=torch.float64)
    timestep = torch.tensor([900.0] * frames + [40.0] * frames, dtype=torch.float64)
    ctx = torch.randn(n, 7, p["context_dim"], generator=g, dtype=torch.float64)
    camera = torch.cat([camera_utils.get_camera(frames, elevation=10, azimuth_start=20),
                        camera_utils.get_camera(frames, elevation=25, azimuth_start=-60)], 0).double()
    out_grad = torch.randn(n, p["out_channels"], 8, 8, generator=g, dtype=torch.float64)
    sample.requires_grad_(True)
    out = unet(sample, timestep, context=ctx, camera=camera, num_frames=frames)
    (grad,) = torch.autograd.grad((out * out_grad).sum(), sample)
    tensors = {"sample": sample.detach(), "timestep": timestep, "encoder_hidden_states": ctx, "camera": camera,
               "num_frames": torch.tensor([float(frames)]), "sample_out_grad": out_grad,
               "expected_sample": out.detach(), "expected_sample_grad": grad}
    save_file({k: v.float().contiguous() for k, v in tensors.items()}, os.path.join(d, "grad_io.safetensors"))
    print(f"mvdream unet_tiny: |out| max {out.abs().max():.3f}, |grad| max {grad.abs().max():.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mvdream-repo", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.mvdream_repo:
        mvdream_case(os.path.abspath(args.mvdream_repo))
    for name, c in CASES.items():
        d = os.path.join(ROOT, "tests", "fixtures", "models", name)
        unet = UNet2DConditionModel.from_pretrained(d).double().eval()
        g = torch.Generator().manual_seed(c["seed"])
        b, (h, w) = c["batch"], c["hw"]
        sample = torch.randn(b, unet.config.in_channels, h, w, generator=g, dtype=torch.float64)
        timestep = torch.tensor([981.0, 17.0, 500.0][:b], dtype=torch.float64)
        ctx = torch.randn(b, 9, unet.config.cross_attention_dim, generator=g, dtype=torch.float64)
        out_grad = torch.randn(b, unet.config.out_channels, h, w, generator=g, dtype=torch.float64)
        sample.requires_grad_(True)
        out = unet(sample, timestep, encoder_hidden_states=ctx).sample
        (grad,) = torch.autograd.grad((out * out_grad).sum(), sample)
        tensors = {"sample": sample.detach(), "timestep": timestep, "encoder_hidden_states": ctx,
                   "sample_out_grad": out_grad, "expected_sample": out.detach(), "expected_sample_grad": grad}
        save_file({k: v.float().contiguous() for k, v in tensors.items()}, os.path.join(d, "grad_io.safetensors"))
        print(f"{name}: |out| max {out.abs().max():.3f}, |grad| max {grad.abs().max():.3f}")
        lora_case(unet, tensors, d, c["seed"] + 100)


def lora_case(unet, tensors, d, seed, rank=4, alpha=8.0):
    """The UNet with a LoRA delta on every attention projection, and the gradients of its factors."""
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for name, module in unet.named_modules():
        if not any(name.endswith(f"{a}.{p}") for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")):
            continue
        a = (torch.randn(rank, module.in_features, generator=g, dtype=torch.float64) * 0.05).requires_grad_(True)
        b = (torch.randn(module.out_features, rank, generator=g, dtype=torch.float64) * 0.05).requires_grad_(True)
        base = module.forward
        module.forward = (lambda base, a, b: lambda x: base(x) + (alpha / rank) * (x @ a.T) @ b.T)(base, a, b)
        factors[name] = (a, b)
    # The camera condition: threestudio's TimestepEmbedding(16, temb) as the class embedding.
    from diffusers.models.embeddings import TimestepEmbedding
    temb = unet.time_embedding.linear_2.out_features
    camera_mlp = TimestepEmbedding(16, temb).double()
    with torch.no_grad():
        for p in camera_mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.1)
    unet.class_embedding = camera_mlp
    camera = torch.randn(tensors["sample"].shape[0], 16, generator=g, dtype=torch.float64)
    camera_params = dict(camera_mlp.named_parameters())
    sample = tensors["sample"].clone().requires_grad_(True)
    out = unet(sample, tensors["timestep"], encoder_hidden_states=tensors["encoder_hidden_states"], class_labels=camera).sample
    leaves = [sample] + [t for ab in factors.values() for t in ab] + list(camera_params.values())
    grads = torch.autograd.grad((out * tensors["sample_out_grad"]).sum(), leaves)
    io = {k: tensors[k] for k in ("sample", "timestep", "encoder_hidden_states", "sample_out_grad")}
    io["lora_alpha"], io["camera"] = torch.tensor([alpha]), camera
    io["expected_sample"], io["expected_sample_grad"] = out.detach(), grads[0]
    for i, (name, (a, b)) in enumerate(factors.items()):
        io[f"lora.{name}.A"], io[f"lora.{name}.B"] = a.detach(), b.detach()
        io[f"expected_lora_grad.{name}.A"], io[f"expected_lora_grad.{name}.B"] = grads[1 + 2 * i], grads[2 + 2 * i]
    for (pname, p), gr in zip(camera_params.items(), grads[1 + 2 * len(factors):]):
        io[f"lora.camera_embedding.{pname}"], io[f"expected_lora_grad.camera_embedding.{pname}"] = p.detach(), gr
    save_file({k: v.float().contiguous() for k, v in io.items()}, os.path.join(d, "grad_lora_io.safetensors"))
    big = max(float(t.abs().max()) for t in grads[1:])
    print(f"  with LoRA on {len(factors)} projections: |out| max {out.abs().max():.3f}, |factor grads| max {big:.3f}")


if __name__ == "__main__":
    main()

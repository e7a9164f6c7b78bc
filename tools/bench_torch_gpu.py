"""PyTorch on a CUDA GPU at the shapes of `fsd3d bench`: the reference beside fsd3d's own kernels.

A one-off reference for docs/performance.md: what cuBLAS, cuDNN and PyTorch's
fused attention reach on the same card that runs fsd3d through Vulkan, at the
shapes of `fsd3d bench matmul | conv | attention | unet`. Same protocol as the
Rust bench: warm up, then repeat for about `--seconds` and report the mean time
per call (CUDA events around a batch of calls, so launch gaps count as they do
for fsd3d's one-submit-per-batch loop).

f32 is measured with TF32 off (full f32 products, as fsd3d's f32 kernels do)
and, as an extra row, with TF32 on (PyTorch's setting for convolutions).

    python3 tools/bench_torch_gpu.py --json > torch_gpu.jsonl
    python3 tools/bench_torch_gpu.py --only unet
    python3 tools/bench_torch_gpu.py --fsd-step
    python3 tools/bench_torch_gpu.py --only unet --fsd-step

`--fsd-step` times the prior's side of one FSD iteration, beside `fsd3d bench
fsd-step --random-weights` (SD 1.5's UNet and VAE, random init; see
bench_fsd_step for what stands in for the NeRF): alone, or after the
families that `--only` names.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

SQUARE = [256, 512, 1024, 2048]
# (batch, M, N, K): Linear layers of SD 1.5's UNet at a 64x64 latent, batch 2, and the text K/V projection.
LINEAR = [(2, 4096, 320, 320), (2, 4096, 1280, 320), (2, 1024, 640, 640), (2, 256, 1280, 1280), (2, 77, 320, 768)]
# (batch, cin, cout, side, k, stride): the tiny prior's and SD 1.5's convolutions.
CONV = [
    (2, 32, 32, 16, 3, 1), (2, 64, 64, 16, 3, 1), (2, 32, 32, 32, 3, 1), (2, 64, 64, 32, 3, 1),
    (2, 320, 320, 64, 3, 1), (2, 640, 640, 32, 3, 1), (2, 1280, 1280, 16, 3, 1), (2, 320, 640, 64, 1, 1),
    (2, 320, 320, 64, 3, 2),
]
# (batch, Lq, Lk, heads, head dim)
ATTENTION = [
    (2, 64, 64, 4, 16), (2, 256, 256, 8, 8), (2, 256, 256, 4, 32), (2, 256, 256, 8, 160),
    (2, 1024, 1024, 8, 80), (2, 4096, 77, 8, 40), (2, 4096, 4096, 8, 40),
]

SD15_UNET_CONFIG = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], center_input_sample=False,
    cross_attention_dim=768,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32, out_channels=4, sample_size=64,
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
)

# diffusers' AutoencoderKL of SD 1.5 (the keys that differ from its defaults, and the sizes).
SD15_VAE_CONFIG = dict(
    act_fn="silu", block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
    in_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, out_channels=3, sample_size=512,
    scaling_factor=0.18215, up_block_types=["UpDecoderBlock2D"] * 4,
)


def timed(fn, seconds):
    """Mean milliseconds per call of `fn` (already warm)."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    one = max(time.perf_counter() - t0, 1e-6)
    batch = max(1, min(1000, int(0.05 / one)))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    total_ms, calls, wall = 0.0, 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - wall < seconds:
        start.record()
        for _ in range(batch):
            fn()
        end.record()
        end.synchronize()
        total_ms += start.elapsed_time(end)
        calls += batch
    return total_ms / calls


def rand(*shape, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.rand(*shape, generator=g, device="cuda", dtype=torch.float32) - 0.5).to(dtype)


def precisions():
    yield "f32", torch.float32, False
    yield "f32-tf32", torch.float32, True
    yield "f16", torch.float16, False


def set_tf32(on):
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def bench_matmul(seconds):
    for name, dtype, tf32 in precisions():
        set_tf32(tf32)
        for n in SQUARE:
            a, b = rand(n, n, dtype=dtype, seed=1), rand(n, n, dtype=dtype, seed=2)
            ms = timed(lambda: torch.mm(a, b), seconds)
            yield dict(family="matmul", case=f"{n}x{n} · {n}x{n}", dtype=name, ms=ms, gflops=2 * n**3 / ms / 1e6)
        for bt, m, n, k in LINEAR:
            x, w = rand(bt, m, k, dtype=dtype, seed=1), rand(n, k, dtype=dtype, seed=2)
            ms = timed(lambda: F.linear(x, w), seconds)
            yield dict(family="matmul", case=f"{bt}x{m}x{k} · ({n}x{k})ᵀ", dtype=name, ms=ms,
                       gflops=2 * bt * m * n * k / ms / 1e6)


def bench_conv(seconds):
    torch.backends.cudnn.benchmark = True
    for name, dtype, tf32 in precisions():
        set_tf32(tf32)
        for bt, cin, cout, side, k, stride in CONV:
            x, w = rand(bt, cin, side, side, dtype=dtype, seed=1), rand(cout, cin, k, k, dtype=dtype, seed=2)
            bias = rand(cout, dtype=dtype, seed=3)
            out_side = (side + 2 * (k // 2) - k) // stride + 1
            ms = timed(lambda: F.conv2d(x, w, bias, stride=stride, padding=k // 2), seconds)
            flops = 2 * bt * cout * out_side**2 * cin * k * k
            yield dict(family="conv", case=f"{k}x{k} s{stride} {cin}->{cout} at {side}² B{bt}", dtype=name, ms=ms,
                       gflops=flops / ms / 1e6)
        x = rand(2, 320, 64, 64, dtype=dtype, seed=4)
        gw, gb = torch.ones(320, device="cuda", dtype=dtype), torch.zeros(320, device="cuda", dtype=dtype)
        ms = timed(lambda: F.silu(F.group_norm(x, 32, gw, gb, 1e-5)), seconds)
        yield dict(family="conv", case="group norm + SiLU [2,320,64,64] G32", dtype=name, ms=ms,
                   gbps=2 * x.numel() * x.element_size() / ms / 1e6)


def bench_attention(seconds):
    for name, dtype, _ in precisions():
        if name == "f32-tf32":
            continue
        set_tf32(False)
        for bt, lq, lk, h, d in ATTENTION:
            q = rand(bt, h, lq, d, dtype=dtype, seed=1)
            k = rand(bt, h, lk, d, dtype=dtype, seed=2)
            v = rand(bt, h, lk, d, dtype=dtype, seed=3)
            ms = timed(lambda: F.scaled_dot_product_attention(q, k, v), seconds)
            yield dict(family="attention", case=f"B{bt} Lq{lq} Lk{lk} H{h} D{d}", dtype=name, ms=ms,
                       gflops=4 * bt * h * lq * lk * d / ms / 1e6)


@torch.no_grad()
def bench_unet(seconds):
    from diffusers import UNet2DConditionModel

    models = [("Stable Diffusion 1.5 (random weights)", lambda: UNet2DConditionModel(**SD15_UNET_CONFIG))]
    prior_dir = os.path.join(REPO, "weights", "tiny-shapes", "unet")
    if os.path.isdir(prior_dir):
        models.append(("tiny-shapes prior", lambda: UNet2DConditionModel.from_pretrained(prior_dir)))
    for label, build in models:
        torch.manual_seed(0)
        base = build().eval()
        for name, dtype, tf32 in precisions():
            set_tf32(tf32)
            unet = base.to("cuda", dtype)
            c = unet.config
            x = rand(2, c.in_channels, c.sample_size, c.sample_size, dtype=dtype, seed=1)
            ctx = rand(2, 77, c.cross_attention_dim, dtype=dtype, seed=2)
            t = torch.full((2,), 500, device="cuda")
            ms = timed(lambda: unet(x, t, encoder_hidden_states=ctx).sample, seconds)
            params = sum(p.numel() for p in unet.parameters())
            yield dict(family="unet", case=f"{label}, B2 {c.in_channels}x{c.sample_size}², ctx 77x{c.cross_attention_dim}",
                       dtype=name, ms=ms, params=params)
        del base, unet
        torch.cuda.empty_cache()


def bench_fsd_step(seconds):
    """The prior's side of one FSD iteration at SD 1.5's sizes, as fsd3d's `bench fsd-step` runs it,
    with a stand-in for the NeRF: a random 64x64 image (f32, requiring grad, as the render) -> image·2 − 1
    -> bilinear resize to 512 -> VAE encode (posterior mean × scaling factor) -> x_t at t = 500 -> UNet on
    the CFG pair (batch 2, 77x768 context) under no_grad -> w(t)·(ε̂ − ε) with CFG 100 and w = 1 − ᾱ_t ->
    backward through the encoder and the resize -> one Adam step on the image. Random init from the configs
    (speed needs the shapes). Not measured: the render and field backward, which fsd3d's step includes."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    unet_base = UNet2DConditionModel(**SD15_UNET_CONFIG).eval().requires_grad_(False)
    vae_base = AutoencoderKL(**SD15_VAE_CONFIG).eval().requires_grad_(False)
    # DDPM's scaled-linear schedule of SD 1.5 (beta 0.00085 .. 0.012 over 1000 steps).
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = float(torch.cumprod(1 - betas, 0)[500])
    for name, dtype, tf32 in precisions():
        set_tf32(tf32)
        unet, vae = unet_base.to("cuda", dtype), vae_base.to("cuda", dtype)
        render = rand(1, 3, 64, 64, dtype=torch.float32, seed=1).add_(0.5).requires_grad_(True)
        adam = torch.optim.Adam([render], lr=0.01)
        ctx = rand(2, 77, 768, dtype=dtype, seed=2)  # [uncond; cond] text embeddings
        eps = torch.randn(1, 4, 64, 64, device="cuda", generator=torch.Generator(device="cuda").manual_seed(3))
        t = torch.full((2,), 500, device="cuda")

        def step():
            adam.zero_grad(set_to_none=True)
            image = F.interpolate(render * 2 - 1, size=(512, 512), mode="bilinear", align_corners=False)
            z = vae.encode(image.to(dtype)).latent_dist.mean.float() * vae.config.scaling_factor
            with torch.no_grad():
                x_t = (alpha_bar**0.5 * z + (1 - alpha_bar) ** 0.5 * eps).to(dtype)
                e_uncond, e_cond = unet(torch.cat([x_t, x_t]), t, encoder_hidden_states=ctx).sample.float().chunk(2)
                grad = (1 - alpha_bar) * (e_uncond + 100.0 * (e_cond - e_uncond) - eps)
            z.backward(gradient=grad)
            adam.step()

        ms = timed(step, seconds)
        yield dict(family="fsd-step", case="SD 1.5 UNet + VAE (random init): 64² render stand-in -> 512² -> "
                   "encode -> CFG pair -> encoder backward -> Adam", dtype=name, ms=ms)
        del unet, vae, render, adam
        torch.cuda.empty_cache()
    del unet_base, vae_base


FAMILIES = dict(matmul=bench_matmul, conv=bench_conv, attention=bench_attention, unet=bench_unet)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0, help="measuring time per case")
    ap.add_argument("--only", choices=sorted(FAMILIES), action="append", help="families to run (default: all)")
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    ap.add_argument("--fsd-step", action="store_true",
                    help="time the prior's side of one FSD iteration (VAE encode and backward, UNet CFG pair): "
                         "alone, or after the families --only names")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this reference needs a CUDA GPU (tools/bench_torch_cpu.py measures the CPU)")
    head = dict(torch=torch.__version__, device=torch.cuda.get_device_name(), cudnn=torch.backends.cudnn.version())
    print(json.dumps(head) if args.json else f"torch {head['torch']}, {head['device']}, cuDNN {head['cudnn']}", flush=True)
    families = args.only or ([] if args.fsd_step else list(FAMILIES))
    runs = [FAMILIES[fam] for fam in families]
    if args.fsd_step:
        runs.append(bench_fsd_step)
    for bench in runs:
        for row in bench(args.seconds):
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                rate = f"{row['gflops']:10.1f} GFLOP/s" if "gflops" in row else (
                    f"{row['gbps']:10.1f} GB/s" if "gbps" in row else "")
                print(f"{row['family']:<10} {row['case']:<58} {row['dtype']:<9} {row['ms']:10.4f} ms {rate}", flush=True)


if __name__ == "__main__":
    main()

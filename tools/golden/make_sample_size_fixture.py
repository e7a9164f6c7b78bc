"""Golden images of sampling at sizes other than the UNet's `sample_size`,
each drawn from its own initial latents, whose shape decides the size (as in
diffusers, where `latents=` overrides `height=` / `width=`).

- tests/fixtures/models/pipeline/sizes/: the tiny latent pipeline that
  make_model_fixtures.py writes to tests/fixtures/models/pipeline/ (its
  weights, loaded back; UNet sample_size 8, VAE scale factor 4: 32×32 by
  default), sampled by StableDiffusionPipeline at 16×24 and 48×40 (latents
  4×6 and 12×10; 6 and 10 are not multiples of the UNet's overall factor 4,
  so diffusers forwards `upsample_size`), with a negative prompt, CFG 7.5,
  10 DDIM steps; and with the VAE of sizes/vae_f8/ in place of its own (four
  levels: scale factor 8, as Stable Diffusion's; a 12-wide attention head,
  which no fused kernel has, as SD's 512-wide one) at 24×40 (latents 3×5).
- tests/fixtures/tiny_shapes/sizes/: the embedded pixel prior (no VAE, scale
  factor 1; 32×32 by default) at 22×30 and 40×50 through the pipeline's own
  loop (diffusers' UNet and DDIMScheduler: StableDiffusionPipeline needs a VAE).

Each folder: cases.json, latents_<H>x<W>.safetensors ([1, C, h, w] f32),
expected_<H>x<W>.png (diffusers' rounding). A few kB in all.

Run: /opt/fsd3d-venv/bin/python tools/golden/make_sample_size_fixture.py
(make_model_fixtures.py runs it too, after rebuilding the pipeline).
"""
import json
import os
import sys

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from PIL import Image
from safetensors.torch import save_file

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PIPELINE = os.path.join(REPO, "tests", "fixtures", "models", "pipeline")
TINY_SHAPES = os.path.join(REPO, "weights", "tiny-shapes")

STEPS = 10
CFG = 7.5


def denormalize(x):
    """[1, 3, H, W] in [-1, 1] -> [H, W, 3] in [0, 1], as the pipeline's image processor does."""
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()[0]


def write_case(out, meta, latents, image, **fields):
    """Saves one case: its latents and the PNG of `image` ([H, W, 3] in [0, 1]) as numpy_to_pil rounds it."""
    h, w = image.shape[:2]
    name = f"{h}x{w}"
    save_file({"latents": latents.contiguous()}, os.path.join(out, f"latents_{name}.safetensors"))
    Image.fromarray((image * 255).round().astype("uint8")).save(os.path.join(out, f"expected_{name}.png"))
    meta.append(dict(fields, height=h, width=w, latents=f"latents_{name}.safetensors", png=f"expected_{name}.png"))


def factor8_vae(out):
    """A seeded random four-level AutoencoderKL, perturbed as make_model_fixtures.py does, stored in f16."""
    torch.manual_seed(210)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
                        block_out_channels=(12, 12, 12, 12), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64)
    g = torch.Generator().manual_seed(210)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    # The file holds f16; the reference runs on the same values in f32.
    vae.half().save_pretrained(os.path.join(out, "vae_f8"), safe_serialization=True)
    return AutoencoderKL.from_pretrained(os.path.join(out, "vae_f8"), torch_dtype=torch.float32).eval()


def latent_pipeline_sizes():
    out = os.path.join(PIPELINE, "sizes")
    os.makedirs(out, exist_ok=True)
    pipe = StableDiffusionPipeline.from_pretrained(PIPELINE, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    vae_f8 = factor8_vae(out)
    pipe_f8 = StableDiffusionPipeline(unet=pipe.unet, vae=vae_f8, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                      scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None,
                                      requires_safety_checker=False)
    pipe_f8.set_progress_bar_config(disable=True)
    assert (pipe.vae_scale_factor, pipe_f8.vae_scale_factor) == (4, 8)
    prompt, negative = "a photograph of an astronaut", "blurry, low quality"
    meta = []
    for k, (p, vae, (h, w)) in enumerate([(pipe, None, (16, 24)), (pipe, None, (48, 40)), (pipe_f8, "vae_f8", (24, 40))]):
        f = p.vae_scale_factor
        g = torch.Generator().manual_seed(200 + k)
        latents = torch.randn(1, p.unet.config.in_channels, h // f, w // f, generator=g)
        # No height= / width=: the latents decide the size.
        img = p(prompt, negative_prompt=negative, num_inference_steps=STEPS, guidance_scale=CFG,
                latents=latents.clone(), output_type="np").images[0]
        assert img.shape[:2] == (h, w), img.shape
        write_case(out, meta, latents, img, prompt=prompt, negative=negative, steps=STEPS, cfg=CFG, vae=vae)
    with open(os.path.join(out, "cases.json"), "w") as fh:
        json.dump(meta, fh, indent=1)


@torch.no_grad()
def pixel_prior_sizes():
    sys.path.insert(0, os.path.join(REPO, "tools", "tiny_shapes"))
    import prior  # noqa: E402

    out = os.path.join(REPO, "tests", "fixtures", "tiny_shapes", "sizes")
    os.makedirs(out, exist_ok=True)
    te, unet, tok = prior.load(TINY_SHAPES)
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_pretrained(os.path.join(TINY_SHAPES, "scheduler"))
    prompt, negative = "a green cone", "a blue sphere"
    ctx = te(prior.tokenize(tok, [negative, prompt])).last_hidden_state
    meta = []
    for k, (h, w) in enumerate([(22, 30), (40, 50)]):
        g = torch.Generator().manual_seed(300 + k)
        latents = torch.randn(1, unet.config.in_channels, h, w, generator=g)
        # StableDiffusionPipeline's loop: x_T = latents · init_noise_sigma,
        # one UNet call on [negative; prompt], eps = u + s·(c − u), DDIM η = 0.
        sched.set_timesteps(STEPS)
        x = latents * sched.init_noise_sigma
        for t in sched.timesteps:
            xin = sched.scale_model_input(torch.cat([x, x]), t)
            eu, ec = unet(xin, t, encoder_hidden_states=ctx).sample.chunk(2)
            x = sched.step(eu + CFG * (ec - eu), t, x, eta=0.0).prev_sample
        write_case(out, meta, latents, denormalize(x), prompt=prompt, negative=negative, steps=STEPS, cfg=CFG)
    with open(os.path.join(out, "cases.json"), "w") as fh:
        json.dump(meta, fh, indent=1)


def main():
    torch.set_num_threads(1)
    latent_pipeline_sizes()
    pixel_prior_sizes()
    print("wrote", os.path.join(PIPELINE, "sizes"), "and tests/fixtures/tiny_shapes/sizes")


if __name__ == "__main__":
    main()

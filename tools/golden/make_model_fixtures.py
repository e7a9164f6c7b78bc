"""Golden fixtures for the Stable Diffusion forward pass: tiny random-weight
diffusers / transformers models of several configurations, their inputs and
reference outputs, in the layouts users have on disk.

Cases (tests/fixtures/models/<case>/):
- sd1_unet:  UNet2DConditionModel as SD 1.x builds it (conv proj_in/out, one head count)
- sd2_unet:  as SD 2.x (linear projections, a head count per block, upcast attention)
- vae:       AutoencoderKL (encode: mean/logvar, and the encoder's input gradient; decode)
- clip_quick_gelu, clip_gelu: CLIPTextModel with both activations
- pipeline:  a whole latent pipeline folder (model_index.json, unet, vae, text_encoder,
             CLIP BPE tokenizer from tests/fixtures/clip_tokenizer/sd1, DDIM scheduler
             with SD's defaults), initial latents and diffusers' output images;
             pipeline/sizes/ the same pipeline at other sizes (make_sample_size_fixture.py).

Each case has the model folder, `inputs_<module>.safetensors` and
`outputs_<module>.safetensors` (f32), named as `fsd3d forward` reads and writes them.
Weights are perturbed from diffusers' initialisation (norm scales and biases
included) so that every parameter matters.

Run: /opt/fsd3d-venv/bin/python tools/golden/make_model_fixtures.py
"""
import json
import os
import shutil

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import make_sample_size_fixture  # beside this file

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures")
OUT = os.path.join(ROOT, "models")


def perturb(model, seed, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def save_io(case, module, inputs, outputs):
    d = os.path.join(OUT, case)
    save_file({k: v.detach().float().contiguous() for k, v in inputs.items()}, os.path.join(d, f"inputs_{module}.safetensors"))
    save_file({k: v.detach().float().contiguous() for k, v in outputs.items()}, os.path.join(d, f"outputs_{module}.safetensors"))


def unet_case(case, seed, **cfg):
    torch.manual_seed(seed)
    unet = perturb(UNet2DConditionModel(**cfg), seed)
    d = os.path.join(OUT, case)
    unet.save_pretrained(d, safe_serialization=True)
    g = torch.Generator().manual_seed(seed + 1)
    c, s = cfg["in_channels"], cfg["sample_size"]
    sample = torch.randn(2, c, s, s, generator=g)
    timestep = torch.tensor([999.0, 10.0])
    ehs = torch.randn(2, 77, cfg["cross_attention_dim"], generator=g)
    with torch.no_grad():
        out = unet(sample, timestep, encoder_hidden_states=ehs).sample
    save_io(case, "unet", {"sample": sample, "timestep": timestep, "encoder_hidden_states": ehs}, {"sample": out})
    return unet


SD1_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(16, 32, 32),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
)

SD2_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=48, attention_head_dim=[2, 4], norm_num_groups=8,
    use_linear_projection=True, upcast_attention=True, flip_sin_to_cos=True, freq_shift=0,
)

VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
    block_out_channels=(16, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    sample_size=16,
)


def vae_case(case, seed):
    torch.manual_seed(seed)
    vae = perturb(AutoencoderKL(**VAE), seed)
    d = os.path.join(OUT, case)
    vae.save_pretrained(d, safe_serialization=True)
    g = torch.Generator().manual_seed(seed + 1)
    sample = (torch.rand(1, 3, 20, 24, generator=g) * 2 - 1).requires_grad_(True)
    dist = vae.encode(sample).latent_dist
    mean_grad = torch.randn(dist.mean.shape, generator=g)
    (dist.mean * mean_grad).sum().backward()
    save_io(case, "vae-encode", {"sample": sample, "mean_grad": mean_grad},
            {"mean": dist.mean, "logvar": dist.logvar, "sample_grad": sample.grad})
    latent = torch.randn(1, 4, 5, 6, generator=g)
    with torch.no_grad():
        decoded = vae.decode(latent).sample
    save_io(case, "vae-decode", {"latent": latent}, {"decoded": decoded})
    return vae


def clip_case(case, seed, act, vocab_size=786):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act=act,
                         bos_token_id=784, eos_token_id=785, pad_token_id=785, projection_dim=32)
    te = perturb(CLIPTextModel(cfg), seed)
    d = os.path.join(OUT, case)
    te.save_pretrained(d, safe_serialization=True)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, vocab_size - 2, (2, 77), generator=g)
    ids[:, 0] = 784
    ids[0, 10:] = 785
    ids[1, 40:] = 785
    with torch.no_grad():
        out = te(ids).last_hidden_state
    save_io(case, "text-encoder", {"input_ids": ids.float()}, {"last_hidden_state": out})
    # The engine also accepts integer ids: keep an i64 copy.
    save_file({"input_ids": ids}, os.path.join(d, "inputs_text-encoder_i64.safetensors"))
    return te


def pipeline_case():
    d = os.path.join(OUT, "pipeline")
    unet_cfg = dict(SD1_UNET, cross_attention_dim=32, sample_size=8, layers_per_block=1)
    torch.manual_seed(100)
    unet = perturb(UNet2DConditionModel(**unet_cfg), 100)
    vae = perturb(AutoencoderKL(**VAE), 101)
    te = perturb(CLIPTextModel(CLIPTextConfig(vocab_size=786, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=4, max_position_embeddings=77,
                                              bos_token_id=784, eos_token_id=785, pad_token_id=785)), 102)
    tokdir = os.path.join(ROOT, "clip_tokenizer", "sd1")
    tok = CLIPTokenizer(os.path.join(tokdir, "vocab.json"), os.path.join(tokdir, "merges.txt"), model_max_length=77)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=te, tokenizer=tok, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(d, safe_serialization=True)
    # Ship the tokenizer as SD checkpoints do: vocab.json + merges.txt (the
    # engine's CLIP BPE path), not the tokenizer.json transformers writes.
    for f in ["vocab.json", "merges.txt"]:
        shutil.copy(os.path.join(tokdir, f), os.path.join(d, "tokenizer", f))
    if os.path.exists(os.path.join(d, "tokenizer", "tokenizer.json")):
        os.remove(os.path.join(d, "tokenizer", "tokenizer.json"))
    g = torch.Generator().manual_seed(103)
    latents = torch.randn(1, 4, 8, 8, generator=g)
    cases = [("a red cube", None, 10, 7.5), ("a photograph of an astronaut", "blurry, low quality", 8, 5.0),
             ("", None, 5, 1.0)]
    meta = []
    for i, (prompt, neg, steps, cfg) in enumerate(cases):
        img = pipe(prompt, negative_prompt=neg, num_inference_steps=steps, guidance_scale=cfg,
                   latents=latents.clone(), output_type="np").images[0]
        pil = pipe.numpy_to_pil(img[None])[0]
        pil.save(os.path.join(d, f"expected_{i}.png"))
        meta.append({"prompt": prompt, "negative": neg, "steps": steps, "cfg": cfg, "png": f"expected_{i}.png"})
    save_file({"latents": latents}, os.path.join(d, "latents.safetensors"))
    with open(os.path.join(d, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    unet_case("sd1_unet", 1, **SD1_UNET)
    unet_case("sd2_unet", 2, **SD2_UNET)
    vae_case("vae", 3)
    clip_case("clip_quick_gelu", 4, "quick_gelu")
    clip_case("clip_gelu", 5, "gelu")
    pipeline_case()
    make_sample_size_fixture.latent_pipeline_sizes()
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {OUT}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()

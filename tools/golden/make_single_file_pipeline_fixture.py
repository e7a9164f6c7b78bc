"""Golden fixtures for whole pipelines read from one single-file checkpoint:
tiny Stable Diffusion models saved as one `.safetensors` with the original
latent-diffusion key names, their config YAML beside them, and what diffusers
makes of them. Two layouts:
- sd2_tiny: SD 2.x (OpenCLIP text tower under `cond_stage_model.model.`, its
  penultimate layer; UNet transformers with linear projections and
  num_head_channels);
- sd1_tiny: SD 1.x (transformers' CLIPTextModel under
  `cond_stage_model.transformer.`, quick GELU, last layer; UNet transformers
  with 1x1-conv projections and num_heads).

What diffusers makes of them: its own single-file converters
(`diffusers.loaders.single_file_utils`: `convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`, `convert_open_clip_checkpoint`, the scheduler
of `_legacy_load_scheduler`) build a `StableDiffusionPipeline`, which samples
with DDIM from fixed latents.

The modules that name the tensors are the authors' own: the UNet is
MVDream's `MultiViewUNetModel` without a camera (one view, which is the SD 2.x
UNet; github.com/bytedance/MVDream), the VAE the `AutoencoderKL` its
repository carries, the text tower open_clip's `CLIP` with the visual tower
deleted (as LDM's FrozenOpenCLIPEmbedder does) or transformers'
CLIPTextModel (which LDM's FrozenCLIPEmbedder holds). Nothing of fsd3d is used.

    OMP_NUM_THREADS=1 /work/venv/bin/python tools/golden/make_single_file_pipeline_fixture.py --mvdream-repo /tmp/MVDream

Writes tests/fixtures/ldm/{sd2_tiny,sd1_tiny}/:
- <name>.safetensors: `model.diffusion_model.*`, `first_stage_model.*`,
  `cond_stage_model.*`, f16 (the weights are rounded to f16 first, so the
  file holds exactly the model that made the outputs);
- <name>.yaml: the layout of SD's v2-inference.yaml / v1-inference.yaml with
  the tiny modules;
- tokenizer/: the tiny CLIP BPE of tests/fixtures/clip_tokenizer/{sd2,sd1}
  (786 tokens, padding with "!" / <|endoftext|>), which the text tower's
  vocabulary matches;
- expected.safetensors: `latents_in` [1,4,8,6] (seed 5); for each case i,
  `latents_{i}` (the pipeline's last latents) and `image_{i}` [1,3,64,48]
  (the VAE's decode, unclamped: a random VAE's images span about ±3);
- cases.json: prompt, negative prompt, steps, guidance scale of each case,
  and `scheduler`: the scheduler config diffusers gave the file.
"""
import argparse
import importlib
import json
import os
import shutil
import sys

import torch
import yaml
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_ldm_vae_fixture as vae_fx  # noqa: E402
import make_mvdream_unet_fixture as unet_fx  # noqa: E402

ROOT = os.path.join(HERE, "..", "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "ldm")
TOKENIZERS = os.path.join(ROOT, "tests", "fixtures", "clip_tokenizer")

UNET_COMMON = dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[1, 2],
                   num_res_blocks=1, channel_mult=[1, 2], use_spatial_transformer=True, transformer_depth=1,
                   context_dim=64, use_checkpoint=False, legacy=False)
VARIANTS = {
    "sd2_tiny": dict(unet=dict(UNET_COMMON, num_head_channels=16, use_linear_in_transformer=True), text="openclip",
                     tokenizer="sd2"),
    "sd1_tiny": dict(unet=dict(UNET_COMMON, num_heads=2), text="clip", tokenizer="sd1"),
}
# Four levels, as SD's VAE: 8x smaller latents, so the default 512 px sample is
# SD's 64x64 latents (the 3D loop's default render size).
VAE = dict(double_z=True, z_channels=4, resolution=64, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 1, 1, 1],
           num_res_blocks=1, attn_resolutions=[], dropout=0.0)
TEXT = dict(context_length=77, vocab_size=786, width=64, heads=1, layers=3)
CASES = [
    {"prompt": "a red cube", "negative": None, "steps": 4, "cfg": 5.0},
    {"prompt": "A photograph of an astronaut riding a horse!!", "negative": "blurry", "steps": 3, "cfg": 7.5},
]
OPENCLIP_COND = """      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder
      params:
        freeze: True
        layer: "penultimate\""""
CLIP_COND = "      target: ldm.modules.encoders.modules.FrozenCLIPEmbedder"


def yaml_text(name, unet_params, text):
    def val(v):
        if isinstance(v, bool):
            return "True" if v else "False"
        if isinstance(v, list):
            return "[ " + ", ".join(str(x) for x in v) + " ]"
        return str(v)

    unet = "\n".join(f"        {k}: {val(v)}" for k, v in unet_params.items())
    dd = "\n".join(f"          {k}: {val(v)}" for k, v in VAE.items())
    cond = OPENCLIP_COND if text == "openclip" else CLIP_COND
    return f"""# tests/fixtures/ldm/{name}: Stable Diffusion's inference YAML layout with tiny modules
# (written by tools/golden/make_single_file_pipeline_fixture.py).
model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.00085
    linear_end: 0.0120
    timesteps: 1000
    scale_factor: {vae_fx.SCALE_FACTOR}
    parameterization: "eps"
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
{unet}
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: {vae_fx.EMBED_DIM}
        ddconfig:
{dd}
        lossconfig:
          target: torch.nn.Identity
    cond_stage_config:
{cond}
"""


def rounded(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
            p.copy_(p.half().float())
    return module.eval()


def text_config(text):
    """The transformers config of the text encoder whose last_hidden_state the UNet takes: SD 2.x's penultimate
    OpenCLIP layer is a CLIPTextModel one block short (GELU); SD 1.x's CLIP uses quick GELU and every block."""
    from transformers import CLIPTextConfig
    openclip = text == "openclip"
    return CLIPTextConfig(vocab_size=TEXT["vocab_size"], hidden_size=TEXT["width"], intermediate_size=4 * TEXT["width"],
                          num_hidden_layers=TEXT["layers"] - 1 if openclip else TEXT["layers"],
                          num_attention_heads=TEXT["heads"], max_position_embeddings=TEXT["context_length"],
                          hidden_act="gelu" if openclip else "quick_gelu", projection_dim=32)


def ldm_checkpoint(openaimodel, autoencoder, unet_params, text):
    torch.manual_seed(0)
    unet = rounded(openaimodel.MultiViewUNetModel(**unet_params), 1)
    vae = rounded(autoencoder.AutoencoderKL(ddconfig=dict(VAE), lossconfig={"target": "torch.nn.Identity"},
                                            embed_dim=vae_fx.EMBED_DIM), 2)
    if text == "openclip":
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
        clip = CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(layers=1, width=64, patch_size=16, image_size=32, head_width=64),
                    text_cfg=CLIPTextCfg(**TEXT))
        del clip.visual
        text_prefix, text_sd = "cond_stage_model.model.", rounded(clip, 3).state_dict()
    else:
        from transformers import CLIPTextModel
        model = rounded(CLIPTextModel(text_config(text)), 3)
        # The released files name it as transformers 4 did (`text_model.` first).
        text_prefix = "cond_stage_model.transformer."
        text_sd = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in model.state_dict().items()
                   if not k.endswith("position_ids")}
    sd = {}
    for prefix, tensors in [("model.diffusion_model.", unet.state_dict()), ("first_stage_model.", vae.state_dict()),
                            (text_prefix, text_sd)]:
        sd.update({prefix + k: v.detach().half().contiguous() for k, v in tensors.items()})
    return sd


def diffusers_pipeline(ckpt, cfg, text_kind, tokenizer_dir):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextModel, CLIPTokenizer
    full = {k: v.float() for k, v in ckpt.items()}
    ucfg = sfu.create_unet_diffusers_config_from_ldm(cfg, full, image_size=16)
    unet = UNet2DConditionModel(**ucfg)
    unet.load_state_dict(sfu.convert_ldm_unet_checkpoint(full, ucfg), strict=True)
    vcfg = sfu.create_vae_diffusers_config_from_ldm(cfg, full, image_size=64)
    vae = AutoencoderKL(**vcfg)
    vae.load_state_dict(sfu.convert_ldm_vae_checkpoint(full, vcfg), strict=True)
    text = CLIPTextModel(text_config(text_kind))
    if text_kind == "openclip":
        conv = sfu.convert_open_clip_checkpoint(text, full)
    else:
        conv = sfu.convert_ldm_clip_checkpoint(full)
    if not any(k.startswith("text_model.") for k in text.state_dict()):  # transformers 5 drops the prefix
        conv = {k.removeprefix("text_model."): v for k, v in conv.items()}
    result = text.load_state_dict(conv, strict=False)
    last = f"encoder.layers.{TEXT['layers'] - 1}."
    assert all("position_ids" in k for k in result.missing_keys), result.missing_keys
    assert all((text_kind == "openclip" and last in k) or "position_ids" in k for k in result.unexpected_keys), \
        result.unexpected_keys
    scheduler = sfu._legacy_load_scheduler(DDIMScheduler, full, "scheduler", original_config=cfg)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    pipe = StableDiffusionPipeline(vae=vae.eval(), text_encoder=text.eval(), tokenizer=tokenizer, unet=unet.eval(),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe, dict(scheduler.config)


def write_variant(out_root, name, v, openaimodel, autoencoder):
    out = os.path.join(out_root, name)
    os.makedirs(out, exist_ok=True)
    ckpt = ldm_checkpoint(openaimodel, autoencoder, v["unet"], v["text"])
    save_file(ckpt, os.path.join(out, f"{name}.safetensors"),
              metadata={"source": "tools/golden/make_single_file_pipeline_fixture.py"})
    text = yaml_text(name, v["unet"], v["text"])
    with open(os.path.join(out, f"{name}.yaml"), "w") as f:
        f.write(text)
    tokenizer_dir = os.path.join(TOKENIZERS, v["tokenizer"])
    tok_out = os.path.join(out, "tokenizer")
    shutil.rmtree(tok_out, ignore_errors=True)
    shutil.copytree(tokenizer_dir, tok_out)

    pipe, sched = diffusers_pipeline(ckpt, yaml.safe_load(text), v["text"], tokenizer_dir)
    latents = torch.randn(1, 4, 8, 6, generator=torch.Generator().manual_seed(5))
    expected = {"latents_in": latents}
    for i, c in enumerate(CASES):
        with torch.no_grad():
            lat = pipe(c["prompt"], negative_prompt=c["negative"], num_inference_steps=c["steps"], guidance_scale=c["cfg"],
                       latents=latents.clone(), output_type="latent").images
            image = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample
        expected[f"latents_{i}"], expected[f"image_{i}"] = lat, image
        print(f"{name} case {i}: |latents| max {lat.abs().max():.3f}, image range [{image.min():.3f}, {image.max():.3f}]")
    save_file({k: t.float().contiguous() for k, t in expected.items()}, os.path.join(out, "expected.safetensors"))
    keep = ["num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type", "clip_sample",
            "set_alpha_to_one", "steps_offset", "timestep_spacing"]
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump({"cases": CASES, "scheduler": {k: sched[k] for k in keep}}, f, indent=1)
    print(f"wrote {out}: {len(ckpt)} tensors")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mvdream-repo", required=True)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    _, openaimodel, _, _ = unet_fx.import_mvdream(os.path.abspath(args.mvdream_repo))
    autoencoder = importlib.import_module("mvdream.ldm.models.autoencoder")
    importlib.import_module("mvdream.ldm.modules.diffusionmodules.model").XFORMERS_IS_AVAILBLE = False
    for name, v in VARIANTS.items():
        write_variant(args.out, name, v, openaimodel, autoencoder)


if __name__ == "__main__":
    main()

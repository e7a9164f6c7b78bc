"""The multi-view variant of the tiny-shapes prior (MVDream's architecture on the tiny UNet).

MVDream's MultiViewUNetModel differs from a text-to-image UNet in two places,
and this module adds both to diffusers' UNet2DConditionModel:

- a camera embedding: Linear(16, temb) -> SiLU -> Linear(temb, temb) on each
  view's flattened camera-to-world matrix, added to the time embedding. That
  is diffusers' ``class_embed_type="projection"`` (a TimestepEmbedding on the
  class labels, added to the time embedding), so training uses it as such;
- self-attention (``attn1`` of every transformer block) over the tokens of all
  views of one object at once: the batch holds the views of an object side by
  side, and ``(b f) l c -> b (f l) c`` before attention, back after.

The shipped files name the camera MLP ``camera_embedding.linear_{1,2}`` and
write ``"camera_dim": 16`` in unet/config.json in place of diffusers' class
embedding settings: those are the names fsd3d gives MVDream's ``camera_embed``
(src/models/ldm.rs), so the engine reads the embedded multi-view prior and an
MVDream checkpoint with one code path. ``load`` maps them back for PyTorch.
"""

import json
import os
import shutil

import numpy as np
import torch
import torch.nn.functional as F

import prior

CAMERA_DIM = 16


def mvdream_camera(elevation_deg, azimuth_deg):
    """[..., 16] float32: each view's camera-to-world matrix as fsd3d's `mvdream_camera` makes it.

    z-up world, the camera at (cos e cos a, cos e sin a, sin e) looking at the
    origin, columns [right, up, -forward, position / |position|], flattened
    row by row. The distance drops out: MVDream normalises the translation.
    """
    e = np.deg2rad(np.asarray(elevation_deg, np.float64))
    a = np.deg2rad(np.asarray(azimuth_deg, np.float64))
    e, a = np.broadcast_arrays(e, a)
    pos = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], -1)
    fwd = -pos / np.linalg.norm(pos, axis=-1, keepdims=True)
    right = np.cross(fwd, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    up = np.cross(right, fwd)
    up /= np.linalg.norm(up, axis=-1, keepdims=True)
    t = pos / (np.linalg.norm(pos, axis=-1, keepdims=True) + 1e-8)
    m = np.zeros(e.shape + (4, 4))
    m[..., :3, 0], m[..., :3, 1], m[..., :3, 2], m[..., :3, 3] = right, up, -fwd, t
    m[..., 3, 3] = 1.0
    return m.reshape(e.shape + (16,)).astype(np.float32)


class CrossViewSelfAttention:
    """attn1's processor: one object's views attend to each other's tokens (MVDream)."""

    def __init__(self):
        self.frames = 1

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        assert encoder_hidden_states is None and attention_mask is None, "cross-view attention is self-attention only"
        bf, L, C = hidden_states.shape
        f = self.frames
        assert bf % f == 0, f"num_frames {f} must divide the batch {bf}"
        x = hidden_states.reshape(bf // f, f * L, C)
        h = attn.heads
        q, k, v = (proj(x).reshape(bf // f, f * L, h, -1).transpose(1, 2) for proj in (attn.to_q, attn.to_k, attn.to_v))
        o = F.scaled_dot_product_attention(q, k, v)
        o = o.transpose(1, 2).reshape(bf // f, f * L, -1)
        o = attn.to_out[1](attn.to_out[0](o))
        return o.reshape(bf, L, -1)


def install_cross_view(unet):
    """Swaps every attn1 processor for the cross-view one; returns them (set .frames before a forward)."""
    procs = {}
    cross_view = []
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            p = CrossViewSelfAttention()
            cross_view.append(p)
            procs[name] = p
        else:
            procs[name] = unet.attn_processors[name]
    unet.set_attn_processor(procs)
    return cross_view


def build_unet_from(single_view_unet):
    """The multi-view UNet, starting as the single-view one: its weights, and a camera MLP whose
    output layer is zero, so the camera first adds nothing and training grows its effect."""
    from diffusers import UNet2DConditionModel

    cfg = dict(single_view_unet.config)
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg["class_embed_type"] = "projection"
    cfg["projection_class_embeddings_input_dim"] = CAMERA_DIM
    unet = UNet2DConditionModel(**cfg)
    missing, unexpected = unet.load_state_dict(single_view_unet.state_dict(), strict=False)
    assert not unexpected and all(m.startswith("class_embedding.") for m in missing), (missing, unexpected)
    torch.nn.init.zeros_(unet.class_embedding.linear_2.weight)
    torch.nn.init.zeros_(unet.class_embedding.linear_2.bias)
    return unet


def forward(unet, procs, x, t, ctx, cameras, frames):
    for p in procs:
        p.frames = frames
    return unet(x, t, encoder_hidden_states=ctx, class_labels=cameras).sample


def export(out_dir, src_dir, unet, extra_prior_json):
    """Writes the multi-view pipeline folder: the trained UNet (camera MLP renamed, config with
    camera_dim) and, copied from the single-view prior, its text encoder, tokenizer, scheduler
    and classifier; fsd3d_prior.json gains the views' settings."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    for part in ["text_encoder", "tokenizer", "scheduler", "classifier"]:
        dst = os.path.join(out_dir, part)
        if os.path.exists(dst):
            shutil.rmtree(dst)
        shutil.copytree(os.path.join(src_dir, part), dst)
    shutil.copy(os.path.join(src_dir, "model_index.json"), os.path.join(out_dir, "model_index.json"))
    unet_dir = os.path.join(out_dir, "unet")
    os.makedirs(unet_dir, exist_ok=True)
    cfg = {k: v for k, v in dict(unet.config).items()}
    cfg["_class_name"] = "UNet2DConditionModel"
    import diffusers

    cfg["_diffusers_version"] = diffusers.__version__
    cfg["class_embed_type"] = None
    cfg["projection_class_embeddings_input_dim"] = None
    cfg["camera_dim"] = CAMERA_DIM
    with open(os.path.join(unet_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    sd = {k.replace("class_embedding.", "camera_embedding."): v.detach().float().contiguous() for k, v in unet.state_dict().items()}
    save_file(sd, os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(src_dir, "fsd3d_prior.json")) as f:
        pj = json.load(f)
    pj.update(extra_prior_json)
    with open(os.path.join(out_dir, "fsd3d_prior.json"), "w") as f:
        json.dump(pj, f, indent=2)
        f.write("\n")


def load(model_dir):
    """(text encoder, multi-view UNet, its cross-view processors, tokenizer) from an exported folder."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file
    from tokenizers import Tokenizer
    from transformers import CLIPTextModel

    te = CLIPTextModel.from_pretrained(os.path.join(model_dir, "text_encoder")).eval()
    with open(os.path.join(model_dir, "unet", "config.json")) as f:
        cfg = json.load(f)
    cam = cfg.pop("camera_dim")
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg["class_embed_type"] = "projection"
    cfg["projection_class_embeddings_input_dim"] = cam
    unet = UNet2DConditionModel(**cfg)
    sd = load_file(os.path.join(model_dir, "unet", "diffusion_pytorch_model.safetensors"))
    unet.load_state_dict({k.replace("camera_embedding.", "class_embedding."): v for k, v in sd.items()})
    unet.eval()
    procs = install_cross_view(unet)
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer", "tokenizer.json"))
    return te, unet, procs, tok


@torch.no_grad()
def ddim_sample(te, unet, procs, tok, prompts, seeds, elevation_deg, azimuth_start_deg, frames=4, steps=50, cfg=1.5, eta=1.0):
    """Multi-view sets: for each (prompt, seed), `frames` views at azimuths 360/frames apart from
    `azimuth_start_deg`, one elevation. diffusers DDIM (clip_sample on), CFG u + s (c - u), one
    timestep for all views. Initial noise and eta noise from torch.Generator(seed).
    Returns [N, frames, 3, 32, 32] in [-1, 1]."""
    sched = prior.build_scheduler()
    sched.set_timesteps(steps)
    n = len(prompts)
    az = np.asarray(azimuth_start_deg, np.float64).reshape(-1, 1) + 360.0 / frames * np.arange(frames)
    az = np.broadcast_to(az, (n, frames))
    el = np.broadcast_to(np.asarray(elevation_deg, np.float64).reshape(-1, 1), (n, frames))
    cams = torch.from_numpy(mvdream_camera(el, az).reshape(n * frames, CAMERA_DIM))
    cond = te(prior.tokenize(tok, prompts)).last_hidden_state.repeat_interleave(frames, 0)
    unc = te(prior.tokenize(tok, [""])).last_hidden_state.expand(n * frames, -1, -1)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    x = torch.cat([torch.randn(frames, 3, 32, 32, generator=g) for g in gens])
    for t in sched.timesteps:
        e = forward(unet, procs, torch.cat([x, x]), t, torch.cat([unc, cond]), torch.cat([cams, cams]), frames)
        eu, ec = e.chunk(2)
        eps = eu + cfg * (ec - eu)
        var_noise = torch.cat([torch.randn(frames, 3, 32, 32, generator=g) for g in gens]) if eta > 0 else None
        x = sched.step(eps, t, x, eta=eta, variance_noise=var_noise).prev_sample
    return x.clamp(-1, 1).reshape(n, frames, 3, 32, 32)

"""Model definitions for the tiny-shapes prior: tokenizer, CLIP text encoder, UNet, scheduler.

All components are standard diffusers / transformers / tokenizers objects so the
saved folder is laid out exactly like a Stable Diffusion checkpoint (minus the VAE).
"""

import json
import os

import numpy as np
import torch

from common import BOS, EOS, MAX_LEN, UNK, all_caption_words, write_json

# ---------------------------------------------------------------------------
# Tokenizer: word level, lowercase, whitespace pre-tokenizer, BOS/EOS template,
# truncation to 77 (BOS + 75 words + EOS) and padding to 77 with EOS (SD 1.x).


def vocab():
    words = [BOS, EOS, UNK] + all_caption_words()
    return {w: i for i, w in enumerate(words)}


def build_tokenizer():
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    v = vocab()
    tok = Tokenizer(WordLevel(vocab=v, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        special_tokens=[(BOS, v[BOS]), (EOS, v[EOS])],
    )
    tok.add_special_tokens([BOS, EOS, UNK])
    tok.enable_truncation(max_length=MAX_LEN)
    tok.enable_padding(length=MAX_LEN, pad_id=v[EOS], pad_token=EOS, direction="right")
    return tok


def save_tokenizer(tok, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    special = {
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": UNK,
    }
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": MAX_LEN,
        "padding_side": "right",
        "truncation_side": "right",
        "clean_up_tokenization_spaces": False,
        "do_lower_case": True,
        "model_input_names": ["input_ids", "attention_mask"],
        **special,
    }
    write_json(os.path.join(out_dir, "tokenizer_config.json"), cfg)
    write_json(os.path.join(out_dir, "special_tokens_map.json"), special)


def tokenize(tok, prompts):
    """[B,77] int64 ids: [BOS, words..., EOS, EOS(pad)...] -- the exact CLIPTokenizer layout."""
    enc = tok.encode_batch(list(prompts))
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    assert ids.shape[1] == MAX_LEN, ids.shape
    return torch.from_numpy(ids)


# ---------------------------------------------------------------------------
# Networks


def text_config(hidden=64, layers=3, heads=4):
    from transformers import CLIPTextConfig

    v = vocab()
    return CLIPTextConfig(
        vocab_size=len(v),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        projection_dim=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=MAX_LEN,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
        initializer_range=0.02,
        initializer_factor=1.0,
        pad_token_id=v[EOS],
        bos_token_id=v[BOS],
        eos_token_id=v[EOS],
    )


def unet_kwargs(cross_dim=64, layers_per_block=2):
    return dict(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        center_input_sample=False,
        flip_sin_to_cos=True,
        freq_shift=0,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        only_cross_attention=False,
        block_out_channels=(32, 64, 64),
        layers_per_block=layers_per_block,
        downsample_padding=1,
        mid_block_scale_factor=1,
        act_fn="silu",
        norm_num_groups=8,
        norm_eps=1e-5,
        cross_attention_dim=cross_dim,
        transformer_layers_per_block=1,
        attention_head_dim=4,  # SD 1.x semantics: number of heads (4 heads x 16 dims at 64 ch)
        use_linear_projection=False,
        upcast_attention=False,
        resnet_time_scale_shift="default",
    )


def build_models(seed, text_hidden=64, text_layers=3, layers_per_block=2):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    te = CLIPTextModel(text_config(text_hidden, text_layers))
    unet = UNet2DConditionModel(**unet_kwargs(text_hidden, layers_per_block))
    return te, unet


SCHEDULER_KW = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    trained_betas=None,
    clip_sample=True,
    clip_sample_range=1.0,
    set_alpha_to_one=True,
    steps_offset=0,
    prediction_type="epsilon",
    thresholding=False,
    timestep_spacing="leading",
    rescale_betas_zero_snr=False,
)


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_KW)


def alphas_cumprod():
    betas = torch.linspace(SCHEDULER_KW["beta_start"], SCHEDULER_KW["beta_end"], 1000, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": None,  # filled at export
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": [None, None],
}


def export(out_dir, te, unet, tok):
    import diffusers

    te.save_pretrained(os.path.join(out_dir, "text_encoder"), safe_serialization=True)
    unet.save_pretrained(os.path.join(out_dir, "unet"), safe_serialization=True)
    save_tokenizer(tok, os.path.join(out_dir, "tokenizer"))
    build_scheduler().save_pretrained(os.path.join(out_dir, "scheduler"))
    mi = dict(MODEL_INDEX)
    mi["_diffusers_version"] = diffusers.__version__
    write_json(os.path.join(out_dir, "model_index.json"), mi)


def load(model_dir):
    from diffusers import UNet2DConditionModel
    from tokenizers import Tokenizer
    from transformers import CLIPTextModel

    te = CLIPTextModel.from_pretrained(os.path.join(model_dir, "text_encoder")).eval()
    unet = UNet2DConditionModel.from_pretrained(os.path.join(model_dir, "unet")).eval()
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer", "tokenizer.json"))
    return te, unet, tok


@torch.no_grad()
def ddim_sample(te, unet, tok, prompts, seeds, steps=50, cfg=3.0, batch=64):
    """diffusers DDIMScheduler sampling (eta 0, clip_sample on), CFG eps = u + s (c - u).

    Initial noise for sample i: torch.Generator().manual_seed(seeds[i]), randn [3,32,32].
    Returns float images in [-1, 1], [N,3,32,32].
    """
    sched = build_scheduler()
    sched.set_timesteps(steps)
    out = []
    empty = te(tokenize(tok, [""])).last_hidden_state
    for s in range(0, len(prompts), batch):
        P = prompts[s : s + batch]
        S = seeds[s : s + batch]
        cond = te(tokenize(tok, P)).last_hidden_state
        unc = empty.expand(len(P), -1, -1)
        ctx = torch.cat([unc, cond])
        x = torch.stack([torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(int(k))) for k in S])
        for t in sched.timesteps:
            e = unet(torch.cat([x, x]), t, encoder_hidden_states=ctx).sample
            eu, ec = e.chunk(2)
            eps = eu + cfg * (ec - eu)
            x = sched.step(eps, t, x, eta=0.0).prev_sample
        out.append(x.clamp(-1, 1))
    return torch.cat(out)


def to_uint8(x):
    """[-1,1] NCHW -> uint8 NHWC."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_grid(imgs, path, ncol, scale=3, labels_left=None):
    from PIL import Image

    n = len(imgs)
    h, w = imgs.shape[1:3]
    nrow = (n + ncol - 1) // ncol
    pad = 2
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    grid[:] = 200
    for i, im in enumerate(imgs):
        r, c = divmod(i, ncol)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = im
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)


def count_params(m):
    return sum(p.numel() for p in m.parameters())


def read_json(path):
    with open(path) as f:
        return json.load(f)

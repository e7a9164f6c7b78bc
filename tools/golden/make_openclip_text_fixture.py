"""Golden fixture for single-file checkpoints' OpenCLIP text encoder (Stable
Diffusion 2.x's and MVDream's `cond_stage_model`): a tiny random-weight
open_clip `CLIP` whose visual tower is deleted, as LDM's
`FrozenOpenCLIPEmbedder` deletes it, saved with the key names of a
single-file checkpoint (`cond_stage_model.model.*`), and its outputs for the
two layers the embedder offers:

- "penultimate" (SD 2.x, MVDream): every residual block but the last, then
  `ln_final` (FrozenOpenCLIPEmbedder.encode_with_transformer with layer_idx 1);
- "last": every block, then `ln_final`.

The blocks run through open_clip's own modules (open_clip_torch 3.3.0, whose
transformer is batch-first; the embedder's LND permutes were written for the
older sequence-first layout and are the same computation).

    OMP_NUM_THREADS=1 python tools/golden/make_openclip_text_fixture.py

Writes tests/fixtures/ldm/openclip_text_tiny/:
- model.safetensors: `cond_stage_model.model.*` (f16; the weights are rounded
  to f16 before the outputs are computed). Width 128, 2 heads of 64 (the head
  width of every OpenCLIP text tower), 2 blocks, vocabulary 1000.
- io.safetensors: `input_ids` [3,77] (f32 holding integers: BOS-like 999,
  words, EOS-like 998, zero padding as open_clip.tokenize pads),
  `penultimate` and `last` [3,77,128].
"""
import argparse
import os

import open_clip
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "ldm", "openclip_text_tiny")
PREFIX = "cond_stage_model.model."


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    text = CLIPTextCfg(context_length=77, vocab_size=1000, width=128, heads=2, layers=2)
    vision = CLIPVisionCfg(layers=1, width=64, patch_size=16, image_size=32, head_width=64)
    model = CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text)  # GELU, as ViT-H-14's text tower
    del model.visual
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
            p.copy_(p.half().float())
    model.eval()
    ids = torch.zeros(3, 77, dtype=torch.long)
    for row, words in enumerate([[5, 17, 300], [42], [7, 8, 9, 10, 11, 12, 13]]):
        seq = [999] + words + [998]
        ids[row, : len(seq)] = torch.tensor(seq)

    def run(skip_last):
        with torch.no_grad():
            x = model.token_embedding(ids) + model.positional_embedding
            blocks = model.transformer.resblocks
            for i, r in enumerate(blocks):
                if skip_last and i == len(blocks) - 1:
                    break
                x = r(x, attn_mask=model.attn_mask)
            return model.ln_final(x)

    sd = {PREFIX + k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(args.out, "model.safetensors"))
    io = {"input_ids": ids.float(), "penultimate": run(True), "last": run(False)}
    save_file({k: v.float().contiguous() for k, v in io.items()}, os.path.join(args.out, "io.safetensors"))
    print(f"open_clip {open_clip.__version__}; wrote {args.out}: {len(sd)} tensors: {sorted(sd)[:6]} ...")


if __name__ == "__main__":
    main()

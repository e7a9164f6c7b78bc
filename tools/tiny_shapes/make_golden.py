#!/usr/bin/env python3
"""Golden outputs of the shipped tiny-shapes prior for the Rust parity tests.

Writes tests/fixtures/tiny_shapes/golden.safetensors (f32 / i64, < 1 MB) and
tests/fixtures/tiny_shapes/prompts.json (prompts, seeds, what each tensor is).
Reference implementations: transformers CLIPTextModel, diffusers
UNet2DConditionModel and DDIMScheduler, the torch classifier of
train_classifier.py; all in float32 on CPU.

Tensors (B = number of text prompts):
  text.input_ids              i64 [B,77]   tokenizer/tokenizer.json ids (BOS, words, EOS, EOS padding)
  text.last_hidden_state      f32 [B,77,H] CLIPTextModel(input_ids).last_hidden_state (no attention mask)
  unet.sample                 f32 [2,3,32,32]  torch.Generator().manual_seed(1234) randn
  unet.timesteps              i64 [2]      [999, 10]
  unet.encoder_hidden_states  f32 [2,77,H] text encoder states of unet_prompts
  unet.output                 f32 [2,3,32,32]  UNet(sample, timesteps, encoder_hidden_states).sample
  unet.debug.*                intermediate activations (time_embedding, down_blocks.i, mid_block)
  schedule.alphas_cumprod     f32 [1000]
  ddim.timesteps              i64 [S]      DDIMScheduler.set_timesteps(S).timesteps
  ddim.trajectory             f32 [S+1,1,3,32,32]  x_T = randn(seed 0), then x after each DDIM step (eta 0, CFG)
  classifier.input            f32 [2,3,32,32]  held-out renders in [-1,1]
  classifier.features / shape_logits / colour_logits
  classifier.shape_id / colour_id  i64 [2] true labels
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import COLOURS, SHAPES  # noqa: E402
import prior  # noqa: E402
from train_classifier import load_classifier, to_input  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

TEXT_PROMPTS = [
    "a red cube",
    "",
    "a blue object",
    "an orange torus",
    "a sphere",
    "an object",
    "A Purple  PYRAMID, front view",  # normaliser (lowercase), whitespace runs, punctuation and unknown words
]
UNET_PROMPTS = ["a red cube", ""]
UNET_TIMESTEPS = [999, 10]
DDIM_PROMPT = "a green cone"
DDIM_STEPS = 10
DDIM_CFG = 3.0
DDIM_SEED = 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(REPO, "weights", "tiny-shapes"))
    ap.add_argument("--test", default="/tmp/tiny_shapes_data/test.npz")
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "tiny_shapes"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    te, unet, tok = prior.load(args.model)
    T = {}
    with torch.no_grad():
        ids = prior.tokenize(tok, TEXT_PROMPTS)
        T["text.input_ids"] = ids
        T["text.last_hidden_state"] = te(ids).last_hidden_state

        uids = prior.tokenize(tok, UNET_PROMPTS)
        ehs = te(uids).last_hidden_state
        sample = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1234))
        ts = torch.tensor(UNET_TIMESTEPS, dtype=torch.int64)
        dbg = {}
        hooks = [unet.time_embedding.register_forward_hook(lambda m, i, o: dbg.__setitem__("time_embedding", o))]
        for k, blk in enumerate(unet.down_blocks):
            hooks.append(blk.register_forward_hook(lambda m, i, o, k=k: dbg.__setitem__(f"down_blocks.{k}", o[0])))
        hooks.append(unet.mid_block.register_forward_hook(lambda m, i, o: dbg.__setitem__("mid_block", o)))
        out = unet(sample, ts, encoder_hidden_states=ehs).sample
        for h in hooks:
            h.remove()
        T["unet.sample"] = sample
        T["unet.timesteps"] = ts
        T["unet.encoder_hidden_states"] = ehs
        T["unet.output"] = out
        for k, v in dbg.items():
            T[f"unet.debug.{k}"] = v

        T["schedule.alphas_cumprod"] = prior.alphas_cumprod()
        sched = prior.build_scheduler()
        assert torch.allclose(sched.alphas_cumprod, T["schedule.alphas_cumprod"])
        sched.set_timesteps(DDIM_STEPS)
        T["ddim.timesteps"] = sched.timesteps.to(torch.int64)
        cond = te(prior.tokenize(tok, [DDIM_PROMPT])).last_hidden_state
        unc = te(prior.tokenize(tok, [""])).last_hidden_state
        ctx = torch.cat([unc, cond])
        x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(DDIM_SEED))[None]
        traj = [x]
        for t in sched.timesteps:
            e = unet(torch.cat([x, x]), t, encoder_hidden_states=ctx).sample
            eu, ec = e.chunk(2)
            x = sched.step(eu + DDIM_CFG * (ec - eu), t, x, eta=0.0).prev_sample
            traj.append(x)
        T["ddim.trajectory"] = torch.stack(traj)
        # must equal ddim_sample() used for the model card's grids
        ref = prior.ddim_sample(te, unet, tok, [DDIM_PROMPT], [DDIM_SEED], steps=DDIM_STEPS, cfg=DDIM_CFG)
        assert torch.allclose(ref, x.clamp(-1, 1))

        clf = load_classifier(os.path.join(args.model, "classifier", "model.safetensors"))
        d = np.load(args.test)
        pick = [0, 1]
        cin = to_input(d["images"][pick])
        f, s, c = clf(cin)
        T["classifier.input"] = cin
        T["classifier.features"] = f
        T["classifier.shape_logits"] = s
        T["classifier.colour_logits"] = c
        T["classifier.shape_id"] = torch.from_numpy(d["shape_id"][pick].astype(np.int64))
        T["classifier.colour_id"] = torch.from_numpy(d["colour_id"][pick].astype(np.int64))

    from safetensors.torch import save_file

    T = {k: v.detach().contiguous() for k, v in T.items()}
    for k, v in T.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "golden.safetensors")
    save_file(T, path, metadata={"model": "weights/tiny-shapes", "made_by": "tools/tiny_shapes/make_golden.py"})
    os.chmod(path, 0o644)
    meta = {
        "golden": "golden.safetensors",
        "model": "weights/tiny-shapes",
        "text_prompts": TEXT_PROMPTS,
        "unet_prompts": UNET_PROMPTS,
        "unet_timesteps": UNET_TIMESTEPS,
        "unet_sample": "torch.Generator().manual_seed(1234); torch.randn(2,3,32,32)",
        "ddim": {
            "prompt": DDIM_PROMPT,
            "negative_prompt": "",
            "steps": DDIM_STEPS,
            "cfg": DDIM_CFG,
            "guidance": "eps = eps_uncond + cfg * (eps_cond - eps_uncond)",
            "eta": 0.0,
            "x_T": "torch.Generator().manual_seed(0); torch.randn(3,32,32) (= ddim.trajectory[0])",
            "scheduler": "diffusers DDIMScheduler from scheduler/scheduler_config.json (clip_sample on)",
        },
        "classifier": {
            "source": "first 2 renders of render_dataset.py --n 4000 --seed 1",
            "labels": {"shape": [SHAPES[i] for i in T["classifier.shape_id"].tolist()], "colour": [COLOURS[i] for i in T["classifier.colour_id"].tolist()]},
        },
        "tensors": {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in T.items()},
        "suggested_tolerance": {"f32": "max abs err <= 1e-4 * max(1, max|ref|) for single forwards; DDIM trajectory <= 1e-3"},
    }
    with open(os.path.join(args.out, "prompts.json"), "w") as fh:
        json.dump(meta, fh, indent=2)
        fh.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes), {len(T)} tensors")


if __name__ == "__main__":
    main()

"""CLIP's BPE vocabulary for single-file checkpoints, and its golden ids.

A single-file checkpoint (Stable Diffusion 1.x / 2.x, MVDream) holds no
tokenizer. All of them use OpenAI CLIP's byte-level BPE (49 408 tokens); they
differ only in the padding token (SD 1.x pads with <|endoftext|>, SD 2.x and
OpenCLIP with "!", id 0). fsd3d embeds the merges and builds the vocabulary
from them (256 byte symbols, the same with "</w>", one token per merge, then
<|startoftext|> and <|endoftext|>), as CLIP's own tokenizer does.

This script writes:
- assets/clip-bpe/merges.txt: the first 48 894 merges of CLIP's
  `bpe_simple_vocab_16e6.txt` (the ones its 49 408-token vocabulary uses),
  read from the copy open_clip ships (MIT licence, assets/clip-bpe/LICENSE);
- tests/fixtures/clip_tokenizer/full_vocab_ids.json: the ids transformers'
  CLIPTokenizer gives on that vocabulary (built here from the merges,
  independently of the Rust code), padded to 77 with either padding token,
  and the ids of open_clip.tokenize (MVDream's tokenizer).

    /work/venv/bin/python tools/golden/make_clip_bpe_fixture.py
"""
import gzip
import json
import os
import sys
import tempfile

import open_clip
from open_clip.tokenizer import default_bpe
from transformers import CLIPTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_tokenizer_fixture import bytes_to_unicode  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
MERGES_USED = 49152 - 256 - 2

PROMPTS = [
    "",
    "a red cube",
    "A Photograph of an ASTRONAUT riding a horse",
    "   lots   of\tspaces\n and newlines   ",
    "punctuation!!! ... ?! (brackets) [square] {curly} a-b_c",
    "it's what they've said we'll do, isn't it? I'm sure you'd agree",
    "unicode: café naïve résumé — 東京 🚀 Ünïcödé",
    "numbers 1234567890 and 3.14159",
    "a DSLR photo of a delicious hamburger",
    "a zoomed out DSLR photo of a squirrel playing the piano, highly detailed, 8k, octane render",
    "an astronaut riding a horse, 3d asset",
    " ".join(["word"] * 100),
]


def main():
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = lines[1 : MERGES_USED + 1]
    assert len(merges) == 48894 and all(len(m.split(" ")) == 2 for m in merges)
    out = os.path.join(ROOT, "assets", "clip-bpe")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")

    alphabet = list(bytes_to_unicode().values())
    vocab = alphabet + [a + "</w>" for a in alphabet] + ["".join(m.split(" ")) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    result = {"prompts": PROMPTS}
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
        with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        for name, pad in [("sd1", "<|endoftext|>"), ("sd2", "!")]:
            tok = CLIPTokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"), pad_token=pad)
            result[name] = tok(PROMPTS, padding="max_length", max_length=77, truncation=True).input_ids
    result["open_clip"] = open_clip.tokenize(PROMPTS).tolist()
    path = os.path.join(ROOT, "tests", "fixtures", "clip_tokenizer", "full_vocab_ids.json")
    with open(path, "w") as f:
        json.dump(result, f, ensure_ascii=False)
    differ = [p for p, a, b in zip(PROMPTS, result["sd2"], result["open_clip"]) if a != b]
    print(f"wrote {out}/merges.txt ({len(merges)} merges) and {path}; open_clip differs from transformers on {differ}")


if __name__ == "__main__":
    main()

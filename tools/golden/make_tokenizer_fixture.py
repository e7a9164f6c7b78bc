"""Golden fixture for the CLIP BPE tokenizer.

Builds a small CLIP-style byte-level BPE (vocab.json + merges.txt, learned
here from a short corpus the same way CLIP's vocabulary is laid out: 256 byte
symbols, the same with "</w>", then one entry per merge, then the two special
tokens), and records the ids transformers' CLIPTokenizer gives for awkward
prompts, padded and truncated to 77 as diffusers' pipelines call it.
Two configurations: SD 1.x (pad with <|endoftext|>) and SD 2.x (pad with "!").

Run: /opt/fsd3d-venv/bin/python tools/golden/make_tokenizer_fixture.py
Writes tests/fixtures/clip_tokenizer/{sd1,sd2}/ and tests/fixtures/clip_tokenizer/ids.json.
"""
import collections
import json
import os
import re

import regex
from transformers import CLIPTokenizer

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "clip_tokenizer")
PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)

CORPUS = """
a photograph of an astronaut riding a horse on the moon, high resolution, 4k
a red cube, a blue sphere, a green cone, a yellow cylinder, a purple torus, an orange pyramid
a DSLR photo of a delicious hamburger; a zoomed out photo of a squirrel playing the piano
the quick brown fox jumps over the lazy dog. it's what they've said we'll do, isn't it?
an oil painting of a castle in the mountains at sunset, trending on artstation
a cat wearing sunglasses, studio lighting, highly detailed, 8k, octane render
unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, low-resolution, gloomy
front view, side view, back view, overhead view of a wooden chair and a metal table
"""


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def learn_bpe(corpus, n_merges):
    b2u = bytes_to_unicode()
    words = collections.Counter()
    for piece in PATTERN.findall(re.sub(r"\s+", " ", corpus).lower()):
        sym = [b2u[b] for b in piece.encode("utf-8")]
        sym[-1] = sym[-1] + "</w>"
        words[tuple(sym)] += 1
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        new_words = collections.Counter()
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] += c
        words = new_words
    alphabet = list(b2u.values())
    vocab = alphabet + [a + "</w>" for a in alphabet] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


PROMPTS = [
    "",
    "a red cube",
    "A Photograph of an ASTRONAUT riding a horse",
    "   lots   of\tspaces\n and newlines   ",
    "punctuation!!! ... ?! (brackets) [square] {curly} a-b_c",
    "it's what they've said we'll do, isn't it? I'm sure you'd agree",
    "html entities &amp; &lt;tag&gt; &quot;quoted&quot;",
    "unicode: café naïve résumé — “smart quotes” 東京 🚀 Ünïcödé",
    "numbers 1234567890 and 3.14159",
    "a prompt with <|endoftext|> inside and <|startoftext|> too",
    " ".join(["word"] * 100),
    " ".join(f"token{i}" for i in range(60)),
]


def main():
    vocab, merges = learn_bpe(CORPUS, 400)
    result = {"prompts": PROMPTS}
    for name, pad in [("sd1", "<|endoftext|>"), ("sd2", "!")]:
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
        with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            for a, b in merges:
                f.write(f"{a} {b}\n")
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump({"model_max_length": 77, "pad_token": pad, "bos_token": "<|startoftext|>",
                       "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                       "tokenizer_class": "CLIPTokenizer"}, f, indent=1)
        tok = CLIPTokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"), pad_token=pad)
        ids = tok(PROMPTS, padding="max_length", max_length=77, truncation=True).input_ids
        result[name] = ids
    with open(os.path.join(OUT, "ids.json"), "w") as f:
        json.dump(result, f, ensure_ascii=False)
    print("wrote", OUT, "vocab", len(vocab), "merges", len(merges))


if __name__ == "__main__":
    main()

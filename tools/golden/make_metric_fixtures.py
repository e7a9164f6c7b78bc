"""Golden fixtures for the evaluation metrics: CLIP score (a tiny transformers
CLIPModel and CLIP's image preprocessing), pytorch-fid's FID Inception-v3 with
formula weights, and FID / Inception Score on given features.

Cases:
- tests/fixtures/models/clip_vit/: a tiny CLIPModel (text + vision towers and
  projections; CLIPConfig below), saved with save_pretrained (config.json,
  model.safetensors), the SD1 fixture tokenizer (vocab.json, merges.txt,
  tokenizer_config.json from tests/fixtures/clip_tokenizer/sd1: vocab 786,
  bos 784, eos = pad 785), preprocessor_config.json, and
  - inputs/outputs_clip-image:      pixel_values [3,3,32,32] -> image_embeds [3,16]
  - inputs/outputs_clip-text:       input_ids [2,77] (i64) -> text_embeds [2,16]
  - inputs/outputs_clip-preprocess: image_0 [45,61,3], image_1 [20,27,3] (uint8
    values stored as f32, H x W x RGB) -> pixel_values_0/1 [1,3,32,32]
  - clip_score.json: {"prompt", "scores": [s0, s1]},
    s_k = 100 * cos(image_embeds(pixel_values_k), text_embeds(prompt padded to 77)),
    no clamping at 0 (the paper's CLIP score, per image).
  image_embeds / text_embeds are get_image_features / get_text_features: the
  projected pooled states, NOT L2-normalised (only CLIPModel.forward normalises).
- tests/fixtures/models/inception/: params.json ([name, shape] of every tensor the
  weight formula fills, in state-dict order), inputs_inception (images
  [2,3,37,53] in [0,1]) and outputs_inception (pool [2,2048], logits [2,1008]).
- tests/fixtures/metrics/fid_is.safetensors (f64): features_a [50,64],
  features_b [60,64], fid [1] (pytorch-fid), fid_exact [1] (the same to 40 digits); logits [40,1008], inception_score [1] (splits=1),
  inception_score_10 [1] and inception_score_10_std [1] (splits=10).

Facts checked against the installed libraries (torch 2.15.0, transformers 5.24.0,
pytorch-fid 0.3.0, torch-fidelity 0.4.0, torchvision 0.29.2, pillow 13.0.0,
scipy 1.17.1):

CLIP text pooling. CLIPTextTransformer.forward pools last_hidden_state (after
final_layer_norm) at ONE position per row: if config.eos_token_id == 2 (old
configs) at input_ids.argmax(-1); otherwise (here, eos_token_id = 785) at the
FIRST position where input_ids == eos_token_id, via
(ids == eos).int().argmax(-1). With pad = eos = 785 that is the real end token,
not a pad. Configs that still carry the old default eos_token_id 2 (some Hub CLIP
configs do) take argmax(ids) instead; since <|endoftext|> is the largest id and
argmax returns the first maximum, both rules pick the first end token there, and
here too (785 is the largest id), but the rule this fixture runs is "first eos".
The text tower is causal; no attention mask is passed.

CLIP vision pooling: post_layernorm(last_hidden_state[:, 0]) (the class token;
pre_layrnorm is applied to the embeddings before the encoder), then
visual_projection (no bias). get_image_features / get_text_features return a
BaseModelOutputWithPooling in transformers 5; the embedding is its
pooler_output (already projected).

CLIP preprocessing. transformers 5 has two CLIP processors: CLIPImageProcessor
(torchvision backend, "fast") and CLIPImageProcessorPil (PilBackend, the old
slow PIL path). The golden pixel_values come from CLIPImageProcessorPil on
PIL.Image.fromarray(uint8 HxWx3):
  1. size: shorter side -> 32, longer -> int(32 * long / short) (truncation,
     not rounding; transformers.image_transforms.get_resize_output_image_size,
     the same rule as torchvision.transforms.Resize). 45x61 -> 32x43 (h x w),
     20x27 -> 32x43.
  2. PIL Image.resize((w', h'), Image.BICUBIC) on the uint8 image (reducing_gap
     None): Pillow's separable convolution, a = -0.5 cubic, support scaled by the
     downscale factor (antialiased when shrinking), horizontal pass then vertical,
     fixed-point coefficients, and the result (and the intermediate of the two
     passes) rounded and clamped to uint8.
  3. centre crop 32x32 at top = (h' - 32) // 2, left = (w' - 32) // 2 (FLOOR;
     transformers.image_transforms.center_crop). Here left = (43 - 32) // 2 = 5.
     OpenAI's clip.load transform (torchvision CenterCrop) uses
     int(round((w' - 32) / 2)) = round(5.5) = 6 instead: see the run's printout.
  4. x = uint8 as f64 * (1/255) cast to f32; (x - mean) / std in f32 with
     OpenAI's mean [0.48145466, 0.4578275, 0.40821073] and std
     [0.26862954, 0.26130258, 0.27577711]; channels first.
The script also runs the torchvision-backed CLIPImageProcessor and OpenAI's
transform (PIL resize + round-offset crop) and prints how far they are from the
golden.

pytorch-fid's FID Inception-v3 (pytorch_fid.inception.fid_inception_v3 and
InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True)):
- input: F.interpolate(x, (299, 299), mode="bilinear", align_corners=False)
  (no antialias; here it upsamples 37x53), then 2x - 1.
- every conv is BasicConv2d: conv (no bias) -> BatchNorm2d(eps=0.001, eval:
  running stats) -> ReLU.
- Conv2d_1a (3x3 s2), 2a (3x3), 2b (3x3 p1), max_pool 3x3 s2, 3b (1x1), 4a (3x3),
  max_pool 3x3 s2, Mixed_5b/5c/5d (FIDInceptionA), Mixed_6a (torchvision
  InceptionB: its pool is max_pool 3x3 s2), Mixed_6b-6e (FIDInceptionC), Mixed_7a
  (torchvision InceptionD, max_pool 3x3 s2), Mixed_7b (FIDInceptionE_1),
  Mixed_7c (FIDInceptionE_2), AdaptiveAvgPool2d(1) -> pool [N, 2048].
- avg_pool2d(3, stride 1, padding 1, count_include_pad=False) is the branch_pool
  of FIDInceptionA (5b, 5c, 5d), FIDInceptionC (6b, 6c, 6d, 6e) and
  FIDInceptionE_1 (7b): border windows divide by the number of in-image pixels.
- FIDInceptionE_2 (7c) uses max_pool2d(3, stride 1, padding 1) (padding = -inf)
  for its branch_pool instead of an average.
- logits = fc(pool), fc: Linear(2048, 1008) with bias (dropout is off in eval).
  torch-fidelity's IS uses "logits_unbiased" = pool @ fc.weight.T, WITHOUT the
  bias, and its own TF1-style resize of uint8 images: it is not this module.

Formula weights (both sides generate the ~24 M parameters; all uint32 ops mod 2^32):
  fnv1a32(name): h = 0x811C9DC5; for b in name.encode(): h ^= b; h *= 0x01000193
  fmix32(x): x ^= x >> 16; x *= 0x85EBCA6B; x ^= x >> 13; x *= 0xC2B2AE35; x ^= x >> 16
  u[i] = (fmix32(fnv1a32(name) ^ (i * 0x9E3779B9)) >> 8) / 2^24 * 2 - 1   (f64, flat row-major i)
  *.conv.weight, fc.weight: u * sqrt(6 / fan_in), fan_in = numel / shape[0]
  *.bn.weight 1 + 0.2u, *.bn.bias 0.1u, *.bn.running_mean 0.1u,
  *.bn.running_var 1 + 0.5u, fc.bias 0.1u; cast to f32. num_batches_tracked
  is not part of it (and not in params.json).

FID: pytorch_fid.fid_score.calculate_frechet_distance(mu_a, sigma_a, mu_b,
sigma_b) = |mu_a - mu_b|^2 + tr(sigma_a) + tr(sigma_b) - 2 tr(sqrtm(sigma_a sigma_b))
(scipy.linalg.sqrtm, real part), mu = mean over rows, sigma = np.cov(rowvar=False)
(divides by n - 1). With 50 and 60 rows in 64 dims both covariances are singular
(rank <= 49 / 59), as with real FID on fewer than 2048 images.

Inception Score: torch_fidelity.metric_isc.isc_features_to_metric(logits,
splits, shuffle=False): in f64, p = softmax(logits), for split i the rows
[i*N//splits, (i+1)*N//splits) (contiguous chunks, in order when shuffle=False;
torch-fidelity's default is shuffle=True with RandomState(2020) and splits=10),
q = mean of p over the chunk, score_i = exp(mean_rows sum_c p (log p - log q));
it reports mean and std (np.std, ddof 0) over the splits.

Run: /opt/fsd3d-venv/bin/python tools/golden/make_metric_fixtures.py
"""
import json
import os
import shutil
import time

import mpmath
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
from transformers.models.clip.image_processing_clip import CLIPImageProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

import pytorch_fid.inception as pfi
from pytorch_fid.fid_score import calculate_frechet_distance
from torch_fidelity.metric_isc import isc_features_to_metric

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures")
TOKDIR = os.path.join(ROOT, "clip_tokenizer", "sd1")
CLIP_DIR = os.path.join(ROOT, "models", "clip_vit")
INCEPTION_DIR = os.path.join(ROOT, "models", "inception")
METRICS_DIR = os.path.join(ROOT, "metrics")

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
PROMPTS = ["a red cube on a wooden table", "a photograph of an astronaut riding a horse"]
SCORE_PROMPT = PROMPTS[0]


def save_f32(path, tensors):
    save_file({k: v.detach().float().contiguous() for k, v in tensors.items()}, path)


def sizes_of(d):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)


# ---------------------------------------------------------------- CLIP ----

CLIP_CONFIG = dict(
    text_config=dict(vocab_size=786, bos_token_id=784, eos_token_id=785, pad_token_id=785, hidden_size=32,
                     intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                     hidden_act="quick_gelu", projection_dim=16),
    vision_config=dict(image_size=32, patch_size=8, num_channels=3, hidden_size=24, intermediate_size=40,
                       num_hidden_layers=2, num_attention_heads=4, hidden_act="quick_gelu", projection_dim=16),
    projection_dim=16,
)

PREPROCESS = dict(
    do_resize=True, size={"shortest_edge": 32}, resample=3, do_center_crop=True,
    crop_size={"height": 32, "width": 32}, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
    image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD, do_convert_rgb=True,
)


def smooth_image(rng, h, w):
    """uint8 H x W x 3: a few random low-frequency sinusoids per channel + noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.empty((h, w, 3))
    for c in range(3):
        v = np.full((h, w), rng.uniform(60, 190))
        for _ in range(3):
            fy, fx = rng.uniform(0.2, 1.5, size=2)
            v += rng.uniform(20, 50) * np.sin(2 * np.pi * (fy * y / h + fx * x / w) + rng.uniform(0, 2 * np.pi))
        img[..., c] = v + rng.normal(0, 8, size=(h, w))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def openai_clip_preprocess(img_u8, n=32, crop_offset=lambda d: int(round(d / 2.0))):
    """OpenAI clip.load's transform: Resize(n, BICUBIC) (PIL), CenterCrop(n) with a
    round((size - n) / 2) offset (torchvision), ToTensor, Normalize."""
    h, w = img_u8.shape[:2]
    if w <= h:
        nw, nh = n, int(n * h / w)
    else:
        nh, nw = n, int(n * w / h)
    im = PIL.Image.fromarray(img_u8).resize((nw, nh), PIL.Image.BICUBIC)
    top, left = crop_offset(nh - n), crop_offset(nw - n)
    a = np.asarray(im.crop((left, top, left + n, top + n)), dtype=np.float32) / 255.0
    a = (a - np.array(OPENAI_CLIP_MEAN, np.float32)) / np.array(OPENAI_CLIP_STD, np.float32)
    return torch.from_numpy(a.transpose(2, 0, 1).copy())[None]


def clip_case():
    shutil.rmtree(CLIP_DIR, ignore_errors=True)
    os.makedirs(CLIP_DIR)
    torch.manual_seed(20)
    cfg = CLIPConfig(**CLIP_CONFIG)
    model = CLIPModel(cfg)
    g = torch.Generator().manual_seed(20)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "logit_scale":
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    model.eval()
    assert model.text_model.eos_token_id == 785, model.text_model.eos_token_id
    model.save_pretrained(CLIP_DIR, safe_serialization=True)
    for f in ["vocab.json", "merges.txt", "tokenizer_config.json"]:
        shutil.copy(os.path.join(TOKDIR, f), os.path.join(CLIP_DIR, f))

    # Preprocessor config: save_pretrained of the PIL processor (it writes
    # image_processor_type "CLIPImageProcessor").
    proc = CLIPImageProcessorPil(**PREPROCESS)
    proc.save_pretrained(CLIP_DIR)
    with open(os.path.join(CLIP_DIR, "preprocessor_config.json")) as f:
        print("preprocessor_config.json:", json.load(f))

    # Image tower.
    g = torch.Generator().manual_seed(21)
    pixel_values = torch.randn(3, 3, 32, 32, generator=g)
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixel_values)
        image_embeds = out.pooler_output if not torch.is_tensor(out) else out
        vm = model.vision_model
        manual = model.visual_projection(vm.post_layernorm(vm(pixel_values).last_hidden_state[:, 0]))
    assert image_embeds.shape == (3, 16)
    assert torch.allclose(image_embeds, manual, atol=1e-6)
    print("image_embeds norms (not normalised):", image_embeds.norm(dim=-1).tolist())
    save_f32(os.path.join(CLIP_DIR, "inputs_clip-image.safetensors"), {"pixel_values": pixel_values})
    save_f32(os.path.join(CLIP_DIR, "outputs_clip-image.safetensors"), {"image_embeds": image_embeds})

    # Text tower.
    tok = CLIPTokenizer.from_pretrained(CLIP_DIR)
    ids = tok(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ids = ids.to(torch.int64)
    for row, p in zip(ids.tolist(), PROMPTS):
        end = row.index(785)
        print(f"{p!r}: {row[:end + 2]} ... (first eos at {end})")
        assert row[0] == 784 and 785 not in row[1:end]
    with torch.no_grad():
        out = model.get_text_features(input_ids=ids)
        text_embeds = out.pooler_output if not torch.is_tensor(out) else out
        tm = model.text_model
        h = tm(input_ids=ids).last_hidden_state
        first_eos = (ids == 785).int().argmax(-1)
        manual = model.text_projection(h[torch.arange(2), first_eos])
    assert text_embeds.shape == (2, 16)
    assert torch.allclose(text_embeds, manual, atol=1e-6)
    print("text_embeds norms (not normalised):", text_embeds.norm(dim=-1).tolist())
    save_file({"input_ids": ids.contiguous()}, os.path.join(CLIP_DIR, "inputs_clip-text.safetensors"))
    save_f32(os.path.join(CLIP_DIR, "outputs_clip-text.safetensors"), {"text_embeds": text_embeds})

    # Preprocessing golden.
    rng = np.random.default_rng(22)
    images = [smooth_image(rng, 45, 61), smooth_image(rng, 20, 27)]
    fast = CLIPImageProcessor(**PREPROCESS)
    golden = {}
    for k, img in enumerate(images):
        pil = PIL.Image.fromarray(img)
        pv = proc(images=pil, return_tensors="pt").pixel_values
        assert pv.shape == (1, 3, 32, 32) and pv.dtype == torch.float32
        golden[f"pixel_values_{k}"] = pv
        pv_fast = fast(images=pil, return_tensors="pt").pixel_values
        pv_openai = openai_clip_preprocess(img)
        pv_floor = openai_clip_preprocess(img, crop_offset=lambda d: d // 2)
        print(f"preprocess image_{k} {img.shape[:2]}: |PIL golden - torchvision CLIPImageProcessor| max "
              f"{(pv - pv_fast).abs().max():.4g}; |PIL golden - OpenAI clip transform| max "
              f"{(pv - pv_openai).abs().max():.4g}, with a floor crop offset "
              f"{(pv - pv_floor).abs().max():.4g}")
    save_f32(os.path.join(CLIP_DIR, "inputs_clip-preprocess.safetensors"),
             {f"image_{k}": torch.from_numpy(img.astype(np.float32)) for k, img in enumerate(images)})
    save_f32(os.path.join(CLIP_DIR, "outputs_clip-preprocess.safetensors"), golden)

    # CLIP score of the two preprocessed images against one prompt.
    sids = tok([SCORE_PROMPT], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        t = model.get_text_features(input_ids=sids.to(torch.int64)).pooler_output.double()
        scores = []
        for k in range(2):
            im = model.get_image_features(pixel_values=golden[f"pixel_values_{k}"]).pooler_output.double()
            scores.append(float(100 * F.cosine_similarity(im, t, dim=-1)[0]))
    print("clip scores:", scores)
    with open(os.path.join(CLIP_DIR, "clip_score.json"), "w") as f:
        json.dump({"prompt": SCORE_PROMPT, "scores": scores}, f, indent=1)
    # The saved folder reproduces the embeddings.
    reloaded = CLIPModel.from_pretrained(CLIP_DIR).eval()
    with torch.no_grad():
        assert torch.equal(reloaded.get_image_features(pixel_values=pixel_values).pooler_output, image_embeds)
        assert torch.equal(reloaded.get_text_features(input_ids=ids).pooler_output, text_embeds)
    print(f"wrote {CLIP_DIR}: {sizes_of(CLIP_DIR) / 1e3:.1f} kB")


# ----------------------------------------------------------- Inception ----

def fnv1a32(name):
    h = 0x811C9DC5
    for b in name.encode("utf-8"):
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def fmix32(x):
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x85EBCA6B)
    x ^= x >> np.uint32(13)
    x *= np.uint32(0xC2B2AE35)
    x ^= x >> np.uint32(16)
    return x


def formula_u(name, numel):
    """u[i] in [-1, 1), float64, for i = 0..numel-1."""
    i = np.arange(numel, dtype=np.uint32)
    with np.errstate(over="ignore"):
        x = fmix32(np.uint32(fnv1a32(name)) ^ (i * np.uint32(0x9E3779B9)))
    return (x >> np.uint32(8)).astype(np.float64) / 2.0 ** 24 * 2.0 - 1.0


CONV_SCALE = 1.0  # multiplies sqrt(6 / fan_in); left at 1 (see the magnitude check)


def formula_tensor(name, shape):
    numel = int(np.prod(shape))
    u = formula_u(name, numel)
    if name.endswith(".conv.weight") or name == "fc.weight":
        v = u * (CONV_SCALE * np.sqrt(6.0 / (numel / shape[0])))
    elif name.endswith(".bn.weight"):
        v = 1.0 + 0.2 * u
    elif name.endswith(".bn.running_var"):
        v = 1.0 + 0.5 * u
    elif name.endswith((".bn.bias", ".bn.running_mean")) or name == "fc.bias":
        v = 0.1 * u
    else:
        raise ValueError(f"no formula for {name}")
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def formula_state_dict(own):
    """The formula's tensors for every entry of `own` (a state dict); num_batches_tracked kept as is."""
    return {k: (v.clone() if k.endswith("num_batches_tracked") else formula_tensor(k, tuple(v.shape)))
            for k, v in own.items()}


def build_fid_inception():
    """pytorch-fid's InceptionV3 (pool features) and the fid_inception_v3 model inside it,
    with load_state_dict_from_url patched to return the formula weights."""
    built = {}
    orig_tv, orig_load = pfi._inception_v3, pfi.load_state_dict_from_url

    def capture_tv(*a, **kw):
        built["net"] = orig_tv(*a, **kw)  # fid_inception_v3 swaps the FID blocks into this object
        return built["net"]

    def formula_load(url, progress=True):
        assert url == pfi.FID_WEIGHTS_URL
        return formula_state_dict(built["net"].state_dict())

    pfi._inception_v3, pfi.load_state_dict_from_url = capture_tv, formula_load
    try:
        model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True,
                                normalize_input=True, use_fid_inception=True).eval()
    finally:
        pfi._inception_v3, pfi.load_state_dict_from_url = orig_tv, orig_load
    return model, built["net"].eval()


def check_inception_structure(net):
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 for m in bns), "BatchNorm eps"
    assert all(m.conv.bias is None for m in net.modules() if hasattr(m, "conv") and hasattr(m, "bn"))
    assert isinstance(net.Mixed_5b, pfi.FIDInceptionA) and isinstance(net.Mixed_6b, pfi.FIDInceptionC)
    assert isinstance(net.Mixed_7b, pfi.FIDInceptionE_1) and isinstance(net.Mixed_7c, pfi.FIDInceptionE_2)
    assert net.fc.in_features == 2048 and net.fc.out_features == 1008 and net.fc.bias is not None


def inception_case():
    shutil.rmtree(INCEPTION_DIR, ignore_errors=True)
    os.makedirs(INCEPTION_DIR)
    model, net = build_fid_inception()
    check_inception_structure(net)
    sd = net.state_dict()
    params = [[k, list(v.shape)] for k, v in sd.items() if not k.endswith("num_batches_tracked")]
    for k, shape in params:  # the model really holds the formula's values
        assert torch.equal(sd[k], formula_tensor(k, tuple(shape))), k
    print(f"inception: {len(params)} formula tensors, {sum(int(np.prod(s)) for _, s in params) / 1e6:.2f} M values")
    with open(os.path.join(INCEPTION_DIR, "params.json"), "w") as f:
        f.write("[\n" + ",\n".join(json.dumps(p) for p in params) + "\n]\n")

    g = torch.Generator().manual_seed(30)
    images = torch.rand(2, 3, 37, 53, generator=g)
    t0 = time.perf_counter()
    with torch.no_grad():
        pool = model(images)[0].flatten(1)
        logits = net.fc(pool)
    dt = time.perf_counter() - t0
    print(f"inception forward (2 images, CPU, {torch.get_num_threads()} threads): {dt:.2f} s")
    print(f"pool: std {pool.std():.4g} mean {pool.mean():.4g} max {pool.max():.4g}; "
          f"logits: std {logits.std():.4g} mean {logits.mean():.4g}")
    for n, t in [("pool", pool), ("logits", logits)]:
        assert 1e-3 < float(t.std()) < 1e3, f"{n} std {t.std()} out of range: adjust CONV_SCALE"
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    save_f32(os.path.join(INCEPTION_DIR, "inputs_inception.safetensors"), {"images": images})
    save_f32(os.path.join(INCEPTION_DIR, "outputs_inception.safetensors"), {"pool": pool, "logits": logits})
    print(f"wrote {INCEPTION_DIR}: {sizes_of(INCEPTION_DIR) / 1e3:.1f} kB")
    return net


# ------------------------------------------------------------- FID / IS ----

def metrics_case():
    os.makedirs(METRICS_DIR, exist_ok=True)
    rng = np.random.default_rng(40)
    d = 64
    mix_a = rng.normal(size=(d, d)) / np.sqrt(d)
    mix_b = mix_a + 0.5 * rng.normal(size=(d, d)) / np.sqrt(d)
    fa = rng.normal(size=(50, d)) @ mix_a + rng.normal(size=d)
    fb = 1.3 * rng.normal(size=(60, d)) @ mix_b + rng.normal(size=d) + 0.5
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    sig_a, sig_b = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    fid = float(calculate_frechet_distance(mu_a, sig_a, mu_b, sig_b))
    # Cross-check with the symmetric form tr sqrt(S_a^1/2 S_b S_a^1/2) (eigenvalues).
    w, v = np.linalg.eigh(sig_a)
    ra = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ev = np.linalg.eigvalsh(ra @ sig_b @ ra)
    fid_eig = float(((mu_a - mu_b) ** 2).sum() + np.trace(sig_a) + np.trace(sig_b)
                    - 2 * np.sqrt(np.clip(ev, 0, None)).sum())
    print(f"fid {fid!r} (eigenvalue form {fid_eig!r}, diff {fid - fid_eig:.3g})")
    # The exact value for these f64 inputs, to 40 digits: with centred rows Xa, Xb,
    # tr sqrt(S_a S_b) = (sum of the singular values of Xa Xb^T) / sqrt((na-1)(nb-1)).
    # scipy's sqrtm of the singular product is only good to ~1e-9 relative here.
    mpmath.mp.dps = 40
    xa, xb = fa - mu_a, fb - mu_b
    sv = mpmath.svd_r(mpmath.matrix((xa @ xb.T).tolist()), compute_uv=False)
    cross = sum(sv) / mpmath.sqrt((len(fa) - 1) * (len(fb) - 1))
    exact = (mpmath.mpf(float(((mu_a - mu_b) ** 2).sum())) + mpmath.mpf(float(np.trace(sig_a)))
             + mpmath.mpf(float(np.trace(sig_b))) - 2 * cross)
    fid_exact = float(exact)
    print(f"fid exact {fid_exact!r}: pytorch-fid is off by {(fid - fid_exact) / fid_exact:.3g} relative")

    logits = rng.normal(size=(40, 1008)) * 3.0
    is1 = isc_features_to_metric(torch.from_numpy(logits), splits=1, shuffle=False)
    is10 = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=False)
    print(f"inception score: splits=1 {is1}, splits=10 {is10}")
    f64 = lambda x: torch.from_numpy(np.array(x, dtype=np.float64))
    path = os.path.join(METRICS_DIR, "fid_is.safetensors")
    save_file({
        "features_a": f64(fa), "features_b": f64(fb), "fid": f64([fid]), "fid_exact": f64([fid_exact]),
        "logits": f64(logits), "inception_score": f64([is1["inception_score_mean"]]),
        "inception_score_10": f64([is10["inception_score_mean"]]),
        "inception_score_10_std": f64([is10["inception_score_std"]]),
    }, path)
    print(f"wrote {path}: {os.path.getsize(path) / 1e3:.1f} kB")


def main():
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    clip_case()
    inception_case()
    metrics_case()


if __name__ == "__main__":
    main()

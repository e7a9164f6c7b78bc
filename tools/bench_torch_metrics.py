"""PyTorch CPU time of the evaluation's networks, the reference beside
`fsd3d bench metrics` on the same machine: CLIP ViT-B/32's image tower on 24
preprocessed 224² views and its text tower on one 77-token prompt
(transformers CLIPModel, the default CLIPConfig = ViT-B/32), and pytorch-fid's
FID Inception-v3 on 24 views of 512² (resized to 299² inside). Random weights
(speed needs the shapes); warm-up, then one timed call each, in f32.

    /opt/fsd3d-venv/bin/python tools/bench_torch_metrics.py [--threads 2] [--json]
"""
import argparse
import json
import platform
import time

import torch
from transformers import CLIPConfig, CLIPModel
import pytorch_fid.inception as pfi

VIEWS = 24


def timed(fn):
    with torch.no_grad():
        fn()  # warm-up
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def fid_inception():
    """pytorch-fid's InceptionV3 (FID blocks) with random weights: its
    fid_inception_v3 would download the trained ones, so the same network is
    built here as it builds it and handed to InceptionV3 in its place."""
    inception = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    inception.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    inception.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    inception.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    inception.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    inception.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    inception.Mixed_7b = pfi.FIDInceptionE_1(1280)
    inception.Mixed_7c = pfi.FIDInceptionE_2(2048)
    pfi.fid_inception_v3 = lambda: inception
    return pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True, normalize_input=True).eval(), inception.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig()).eval()
    pixels = torch.randn(VIEWS, 3, 224, 224)
    ids = torch.randint(0, 49407, (1, 77))
    fid_pool, inception = fid_inception()
    images = torch.rand(VIEWS, 3, 512, 512)

    def inception_all():
        pool = fid_pool(images)[0].flatten(1)
        return inception.fc(pool)

    rows = [
        ("clip-image vit-b/32", f"{VIEWS}×3×224²", timed(lambda: clip.get_image_features(pixel_values=pixels))),
        ("clip-text vit-b/32", "1×77", timed(lambda: clip.get_text_features(input_ids=ids))),
        ("inception fid", f"{VIEWS}×3×512² → 299²", timed(inception_all)),
    ]
    cpu = platform.processor() or platform.machine()
    for name, shape, s in rows:
        if args.json:
            print(json.dumps({"kernel": name, "shape": shape, "ms": s * 1e3, "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": cpu}))
        else:
            print(f"{name:<24} {shape:<24} {s * 1e3:10.1f} ms  (torch {torch.__version__}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()

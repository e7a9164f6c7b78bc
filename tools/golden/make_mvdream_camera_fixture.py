"""Golden fixture for MVDream's camera conditioning: the outputs of the authors'
own `mvdream/camera_utils.py` (github.com/bytedance/MVDream) on awkward
arguments, for the Rust port of the 16 numbers per view that MVDream's UNet
takes (`camera_embed`).

Nothing here re-implements MVDream. The `mvdream` package is not on PyPI and
its `__init__` pulls in the whole LDM stack (omegaconf, open_clip,
huggingface_hub), so this script loads the single file
`<repo>/mvdream/camera_utils.py` from a clone you point it at and calls
`get_camera`, `create_camera_to_world_matrix`, `convert_opengl_to_blender`
and `normalize_camera` as they are. That file imports numpy and torch, so
torch must be installed (the script itself needs only numpy beyond that).

    git clone https://github.com/bytedance/MVDream /tmp/MVDream
    python tools/golden/make_mvdream_camera_fixture.py --mvdream-repo /tmp/MVDream

(`--mvdream-repo` may also name the .py file itself. In a git clone the
commit is read with `git rev-parse HEAD`; otherwise pass `--source-commit`.)
Writes tests/fixtures/mvdream/cameras.json.

What the fixture holds
- `get_camera`: for each case the arguments, `azimuths_deg` (the values
  get_camera really passed to create_camera_to_world_matrix, recorded by
  wrapping that function), `output` = the [N, 16] float32 tensor get_camera
  returns (as exact float values), and `output_f64` = the float64 array it
  builds just before its final `torch.tensor(...).float()` (captured by
  handing get_camera a stand-in `torch` whose `tensor(x).float()` returns x).
  Note the np.arange quirk: get_camera(7, azimuth_span=300) returns 8 rows.
- `create_camera_to_world_matrix` / `convert_opengl_to_blender`: the pieces.
- `normalize_camera`: numpy float64 and torch float32 inputs (the function
  mutates its input in place, so each call gets a copy), zero and tiny
  translations (the `+ 1e-8` in the denominator shows).
- `threestudio_c2w`: MVDream-threestudio's guidance calls
  `normalize_camera(c2w)` on threestudio's camera-to-world matrices
  (threestudio/models/guidance/multiview_diffusion_guidance.py,
  get_camera_cond). The inputs are built with the lines copied from
  threestudio/data/random_multiview.py (collate, no perturbation); they are
  recorded, so a test should read `input`, not rebuild it. Each view is also
  compared with get_camera(1, elevation, azimuth_start=azimuth+90) to show
  threestudio's azimuth is MVDream's minus 90 degrees.
Elevation 90 (case pole_elev90) does not give NaN: in float64
cos(radians(90)) = 6.1e-17 > 0, so `right` comes out (1, 0, 0). In float32
cos(radians(90)) = -4.4e-8 and `right` flips to (-1, 0, 0), so a port must do
this in float64 (then cast) to match. Were a value non-finite it would be
written as null (JSON has no NaN); none is at present.
"""
import argparse
import hashlib
import importlib.util
import json
import math
import os
import subprocess

import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "mvdream", "cameras.json")
UPSTREAM = "https://github.com/bytedance/MVDream"
REL_PATH = "mvdream/camera_utils.py"

# (name, get_camera kwargs). num_frames is positional in get_camera.
GET_CAMERA_CASES = [
    ("defaults_n4", dict(num_frames=4)),
    ("t2i_script_defaults", dict(num_frames=4, elevation=15, azimuth_start=90, azimuth_span=360)),
    ("n1_elev0", dict(num_frames=1, elevation=0, azimuth_start=0, azimuth_span=360, blender_coord=True)),
    ("n5_elev_neg10_az37", dict(num_frames=5, elevation=-10, azimuth_start=37, azimuth_span=360, blender_coord=True)),
    ("n4_elev30.5_az37_span270_opengl", dict(num_frames=4, elevation=30.5, azimuth_start=37, azimuth_span=270,
                                            blender_coord=False)),
    ("n5_elev0_az90_span270_opengl", dict(num_frames=5, elevation=0, azimuth_start=90, azimuth_span=270,
                                          blender_coord=False)),
    ("n1_elev30.5_az90_span270_opengl", dict(num_frames=1, elevation=30.5, azimuth_start=90, azimuth_span=270,
                                             blender_coord=False)),
    ("n4_elev_neg10_opengl", dict(num_frames=4, elevation=-10, azimuth_start=0, azimuth_span=360, blender_coord=False)),
    ("n4_elev15_az_neg45.5", dict(num_frames=4, elevation=15, azimuth_start=-45.5, azimuth_span=360)),
    ("n5_elev30.5_az90_span270", dict(num_frames=5, elevation=30.5, azimuth_start=90, azimuth_span=270)),
    ("n4_elev89.9_near_pole", dict(num_frames=4, elevation=89.9)),
    ("arange_quirk_n7_span300_gives_8", dict(num_frames=7, elevation=15, azimuth_start=0, azimuth_span=300)),
    ("pole_elev90", dict(num_frames=1, elevation=90)),
    ("pole_elev_neg90_az37", dict(num_frames=1, elevation=-90, azimuth_start=37)),
]

C2W_CASES = [(15, 0), (0, 90), (-10, 37), (30.5, 270), (15, -45.5), (90, 0)]

# threestudio configs/mvdream-sd21.yaml: elevation_range [0, 30], fovy_range [15, 60],
# camera_distance_range [0.8, 1.0] relative (distance = r / tan(fovy / 2)), n_view 4.
THREESTUDIO_CASES = [
    # (name, elevation_deg, first azimuth_deg, relative r, fovy_deg, n_view)
    ("elev15_fovy40_r0.9", 15.0, -137.3, 0.9, 40.0, 4),
    ("elev0_fovy15_r1.0", 0.0, -180.0, 1.0, 15.0, 4),
    ("elev30_fovy60_r0.8", 30.0, 12.75, 0.8, 60.0, 4),
]


def load_camera_utils(path):
    if os.path.isdir(path):
        path = os.path.join(path, REL_PATH)
    if not os.path.isfile(path):
        raise SystemExit(f"no {REL_PATH} at {path}: pass --mvdream-repo <clone of {UPSTREAM}>")
    spec = importlib.util.spec_from_file_location("mvdream_camera_utils", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for fn in ("get_camera", "create_camera_to_world_matrix", "convert_opengl_to_blender", "normalize_camera"):
        if not hasattr(mod, fn):
            raise SystemExit(f"{path} has no {fn}(); this script was written against {UPSTREAM} @ 618f844")
    return mod, os.path.abspath(path)


def git_commit(path):
    d = os.path.dirname(path)
    try:
        head = subprocess.run(["git", "-C", d, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", d, "status", "--porcelain", "--", path], capture_output=True, text=True,
                               check=True).stdout.strip()
        return head + (" (file modified locally)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def finite(x):
    """Nested lists of floats with NaN/inf as None (JSON has no NaN)."""
    if isinstance(x, list):
        return [finite(v) for v in x]
    x = float(x)
    return x if math.isfinite(x) else None


class Recording:
    """Wraps mod.create_camera_to_world_matrix (looked up by name inside get_camera) to record its arguments."""

    def __init__(self, mod):
        self.mod, self.calls = mod, []

    def __enter__(self):
        self.orig = self.mod.create_camera_to_world_matrix

        def wrapped(elevation, azimuth, *a, **k):
            self.calls.append((float(elevation), float(azimuth)))
            return self.orig(elevation, azimuth, *a, **k)

        self.mod.create_camera_to_world_matrix = wrapped
        return self

    def __exit__(self, *exc):
        self.mod.create_camera_to_world_matrix = self.orig


class KeepFloat64:
    """Stand-in for the module's `torch` during get_camera: `torch.tensor(a).float()` returns the float64 array a."""

    class _T:
        def __init__(self, a):
            self.a = a

        def float(self):
            return np.asarray(self.a)

    def __init__(self, mod):
        self.mod = mod

    def tensor(self, a):
        return KeepFloat64._T(a)

    def __enter__(self):
        self.orig = self.mod.torch
        self.mod.torch = self
        return self

    def __exit__(self, *exc):
        self.mod.torch = self.orig


def get_camera_cases(mod):
    out = []
    for name, kw in GET_CAMERA_CASES:
        kw = dict(kw)
        n = kw.pop("num_frames")
        with np.errstate(invalid="ignore", divide="ignore"):
            with Recording(mod) as rec:
                cam = mod.get_camera(n, **kw)
            with KeepFloat64(mod):
                cam64 = mod.get_camera(n, **kw)
        assert str(cam.dtype) == "torch.float32" and cam.ndim == 2 and cam.shape[1] == 16, (name, cam.dtype, cam.shape)
        assert cam64.dtype == np.float64 and cam64.shape == tuple(cam.shape), (name, cam64.dtype, cam64.shape)
        args = {"num_frames": n, "elevation": 15, "azimuth_start": 0, "azimuth_span": 360, "blender_coord": True}
        args.update(kw)
        out.append({
            "name": name,
            "args": args,
            "rows": int(cam.shape[0]),
            "elevations_deg": [e for e, _ in rec.calls],
            "azimuths_deg": [a for _, a in rec.calls],
            "output_dtype": "float32",
            "output": finite(cam.double().tolist()),
            "output_f64": finite(cam64.tolist()),
            "has_nan": bool(np.isnan(cam64).any()),
        })
    return out


def c2w_cases(mod):
    out = []
    for elev, az in C2W_CASES:
        with np.errstate(invalid="ignore", divide="ignore"):
            m = mod.create_camera_to_world_matrix(elev, az)
            b = mod.convert_opengl_to_blender(m.copy())
        out.append({"elevation": elev, "azimuth": az, "cam2world": finite(m.tolist()), "blender": finite(b.tolist())})
    return out


def blender_torch_case(mod):
    import torch

    ms = np.stack([mod.create_camera_to_world_matrix(e, a) for e, a in C2W_CASES[:4]])
    t = torch.tensor(ms, dtype=torch.float32)
    b = mod.convert_opengl_to_blender(t.clone())
    return {"note": "torch float32 batch [4,4,4] (the ndim == 3 branch)", "input": ms.astype(np.float32).astype(np.float64).tolist(),
            "output": b.double().tolist()}


def normalize_cases(mod):
    import torch

    base = []
    for (elev, az), d in zip(C2W_CASES[:4], [0.5, 2.5, 3.7320508075688772, 1.0]):
        m = mod.create_camera_to_world_matrix(elev, az)
        m[:3, 3] *= d
        base.append(m.reshape(16))
    base = np.stack(base)
    zero = np.eye(4).reshape(1, 16)
    tiny = np.eye(4)
    tiny[:3, 3] = [1e-9, -2e-9, 0.0]
    tiny = tiny.reshape(1, 16)
    inputs = [("scaled_f64", base), ("zero_translation_f64", zero), ("tiny_translation_f64", tiny)]
    out = []
    for name, arr in inputs:
        r = mod.normalize_camera(arr.copy())
        out.append({"name": name, "input_dtype": "float64", "input": arr.tolist(), "output_dtype": "float64",
                    "output": r.tolist()})
    for name, arr in [("scaled_f32_torch", base), ("tiny_translation_f32_torch", tiny)]:
        t = torch.tensor(arr, dtype=torch.float32)
        r = mod.normalize_camera(t.clone())
        out.append({"name": name, "input_dtype": "float32", "input": t.double().tolist(), "output_dtype": "float32",
                    "output": r.double().tolist()})
    # [N, 4, 4] input is accepted too (reshape(-1, 4, 4)); output is always [N, 16].
    t = torch.tensor(base.reshape(-1, 4, 4), dtype=torch.float32)
    r = mod.normalize_camera(t.clone())
    out.append({"name": "scaled_f32_torch_4x4_input", "input_dtype": "float32", "input_shape": [4, 4, 4],
                "input": t.reshape(-1, 16).double().tolist(), "output_dtype": "float32", "output": r.double().tolist()})
    return out


def threestudio_c2w(elevation_deg, azimuth_deg, camera_distances):
    """Input construction only, copied from MVDream-threestudio threestudio/data/random_multiview.py
    (commit efcd6c3, collate(), lines 117-217) with the perturbations at the config's 0. torch float32 like there.
    threestudio calls torch.cross without dim (first size-3 dim); dim=-1 is the same for batches of 4."""
    import torch
    import torch.nn.functional as F

    elevation = elevation_deg * math.pi / 180
    azimuth = azimuth_deg * math.pi / 180
    camera_positions = torch.stack([
        camera_distances * torch.cos(elevation) * torch.cos(azimuth),
        camera_distances * torch.cos(elevation) * torch.sin(azimuth),
        camera_distances * torch.sin(elevation),
    ], dim=-1)
    center = torch.zeros_like(camera_positions)
    up = torch.as_tensor([0, 0, 1], dtype=torch.float32)[None, :].repeat(camera_positions.shape[0], 1)
    lookat = F.normalize(center - camera_positions, dim=-1)
    right = F.normalize(torch.cross(lookat, up, dim=-1), dim=-1)
    up = F.normalize(torch.cross(right, lookat, dim=-1), dim=-1)
    c2w3x4 = torch.cat([torch.stack([right, up, -lookat], dim=-1), camera_positions[:, :, None]], dim=-1)
    c2w = torch.cat([c2w3x4, torch.zeros_like(c2w3x4[:, :1])], dim=1)
    c2w[:, 3, 3] = 1.0
    return c2w


def threestudio_cases(mod):
    import torch

    out = []
    for name, elev, az0, r, fovy, n in THREESTUDIO_CASES:
        elevation_deg = torch.full((n,), elev, dtype=torch.float32)
        # random_multiview.py: azimuth = (u + arange(n_view)) / n_view * 360 - 180, i.e. n views 360/n apart.
        azimuth_deg = torch.tensor([az0 + 360.0 * k / n for k in range(n)], dtype=torch.float32)
        fovy_t = torch.full((n,), fovy, dtype=torch.float32) * math.pi / 180
        dist = torch.full((n,), r, dtype=torch.float32) / torch.tan(0.5 * fovy_t)
        c2w = threestudio_c2w(elevation_deg, azimuth_deg, dist)
        cond = mod.normalize_camera(c2w.clone()).flatten(start_dim=1)  # get_camera_cond, camera_condition_type "rotation"
        ref = torch.cat([mod.get_camera(1, elevation=float(e), azimuth_start=float(a) + 90.0, azimuth_span=360)
                         for e, a in zip(elevation_deg.tolist(), azimuth_deg.tolist())])
        out.append({
            "name": name,
            "elevation_deg": elevation_deg.double().tolist(),
            "azimuth_deg": azimuth_deg.double().tolist(),
            "fovy_deg": fovy,
            "relative_radius": r,
            "camera_distances": dist.double().tolist(),
            "input": c2w.reshape(n, 16).double().tolist(),
            "output_dtype": "float32",
            "output": cond.double().tolist(),
            "get_camera_azimuth_plus_90": ref.double().tolist(),
            "max_abs_diff_vs_get_camera": float((cond - ref).abs().max()),
        })
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mvdream-repo", required=True,
                    help=f"a clone of {UPSTREAM} (or the path of its {REL_PATH})")
    ap.add_argument("--source-commit", default=None,
                    help="commit the file was taken from (default: git rev-parse HEAD in the clone)")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()

    mod, path = load_camera_utils(args.mvdream_repo)
    data = open(path, "rb").read()
    commit = args.source_commit or git_commit(path) or "unknown"
    res = {
        "source": {
            "repo": UPSTREAM,
            "path": REL_PATH,
            "commit": commit,
            "git_blob_sha1": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
            "sha256": hashlib.sha256(data).hexdigest(),
        },
        "generator": "tools/golden/make_mvdream_camera_fixture.py",
        "notes": [
            "get_camera(num_frames, elevation=15, azimuth_start=0, azimuth_span=360, blender_coord=True): degrees; "
            "azimuths are np.arange(azimuth_start, azimuth_span + azimuth_start, azimuth_span / num_frames), so the "
            "row count can exceed num_frames (case arange_quirk_*). Camera on the unit sphere, no distance argument, "
            "no extra_view argument in this version.",
            "output = the returned float32 tensor, row-major flattened 4x4 cam2world per row; output_f64 = the same "
            "before the final .float().",
            "null would stand for NaN (there is none). At elevation +-90 the result relies on float64: "
            "cos(radians(90)) = 6.1e-17 > 0; in float32 it is negative and the right vector flips sign.",
            "normalize_camera scales the translation column to unit length: t / (||t|| + 1e-8); mutates its input.",
            "threestudio_c2w: what MVDream-threestudio feeds the UNet: normalize_camera(c2w); equals "
            "get_camera(1, elevation, azimuth + 90) up to float32 rounding.",
        ],
        "get_camera": get_camera_cases(mod),
        "create_camera_to_world_matrix": c2w_cases(mod),
        "convert_opengl_to_blender_torch": blender_torch_case(mod),
        "normalize_camera": normalize_cases(mod),
        "threestudio_c2w": threestudio_cases(mod),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1, allow_nan=False)
        f.write("\n")
    print("wrote", os.path.normpath(args.out))
    for c in res["get_camera"]:
        print(f"  get_camera {c['name']}: {c['rows']} rows{' (NaN)' if c['has_nan'] else ''}")
    for c in res["threestudio_c2w"]:
        print(f"  threestudio {c['name']}: max |normalize_camera(c2w) - get_camera(az+90)| = "
              f"{c['max_abs_diff_vs_get_camera']:.3g}")


if __name__ == "__main__":
    main()

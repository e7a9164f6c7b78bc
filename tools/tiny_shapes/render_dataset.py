#!/usr/bin/env python3
"""Render the tiny-shapes dataset: multi-view 32x32 RGB renders of simple shapes.

CPU ray casting with numpy: analytic ray/convex-shape intersection (cube, sphere,
cone, cylinder, pyramid) and sphere tracing of the exact SDF for the torus.
Every random parameter is drawn up front from one seeded numpy Generator, so
the dataset is a pure function of (--n, --seed).

The camera / light / shading distribution is PRIOR_CONFIG in common.py and is
written to weights/tiny-shapes/fsd3d_prior.json (the Rust 3D loop reads it).

Output: one .npz with
  images   uint8 [N,32,32,3]   (RGB, row 0 = top)
  alpha    uint8 [N,32,32]     (coverage, 255 = object)
  shape_id int64 [N], colour_id int64 [N]
  radius, yaw_deg, elevation_deg, azimuth_deg, distance, fovy_deg  float32 [N]
  light_pos float32 [N,3]

With --views V (the multi-view prior's data, MVDream's layout) each of the N
objects is rendered from V cameras at azimuths 360/V degrees apart from a
random start, sharing the object's elevation, distance and fovy; each view
draws its own light around its own camera as single views do. Then images is
[N,V,32,32,3], alpha [N,V,32,32], azimuth_deg [N,V] and light_pos [N,V,3].
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ALBEDOS, COLOURS, PRIOR_CONFIG, SHAPES, write_json  # noqa: E402

SS = 4  # supersampling factor per axis

# ---- unit-bounding-sphere shape geometry -------------------------------------
CUBE_S = 1.0 / np.sqrt(3.0)
CYL_A = CYL_H = 1.0 / np.sqrt(2.0)
CONE_A = CONE_H = 1.0 / np.sqrt(2.0)
CONE_K = CONE_A / (2.0 * CONE_H)  # radius shrinks by k per unit of height
PYR_H = 0.6
PYR_B = np.sqrt((1.0 - PYR_H**2) / 2.0)
TOR_R, TOR_r = 0.65, 0.35
TOR_TILT = np.deg2rad(35.0)


def _pyr_planes():
    n = []
    c = []
    for sx, sy in [(1, 0), (-1, 0), (0, 1), (0, -1)]:
        v = np.array([2 * PYR_H * sx, 2 * PYR_H * sy, PYR_B])
        nv = np.linalg.norm(v)
        n.append(v / nv)
        c.append(PYR_B * PYR_H / nv)
    n.append(np.array([0.0, 0.0, -1.0]))
    c.append(PYR_H)
    return np.array(n), np.array(c)


PYR_N, PYR_C = _pyr_planes()
CUBE_N = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64)
CUBE_C = np.full(6, CUBE_S)


def planes_interval(o, d, N, C):
    """Intersection interval of the ray with the convex polytope {x: N x <= C}."""
    lo = np.full(o.shape[0], -np.inf)
    hi = np.full(o.shape[0], np.inf)
    for n, c in zip(N, C):
        den = d @ n
        num = c - o @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            t = num / den
        ent = den < 0
        ext = den > 0
        lo = np.where(ent, np.maximum(lo, t), lo)
        hi = np.where(ext, np.minimum(hi, t), hi)
        par = den == 0
        hi = np.where(par & (num < 0), -np.inf, hi)
    return lo, hi


def quad_roots(A, B, C):
    disc = B * B - 4 * A * C
    sq = np.sqrt(np.maximum(disc, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = (-B - sq) / (2 * A)
        t1 = (-B + sq) / (2 * A)
    return disc, np.minimum(t0, t1), np.maximum(t0, t1)


def hit_sphere(o, d):
    B = 2 * np.einsum("ij,ij->i", o, d)
    C = np.einsum("ij,ij->i", o, o) - 1.0
    disc, t0, t1 = quad_roots(np.ones_like(B), B, C)
    return np.where(disc >= 0, t0, -np.inf), np.where(disc >= 0, t1, -np.inf)


def hit_cube(o, d):
    return planes_interval(o, d, CUBE_N, CUBE_C)


def hit_pyramid(o, d):
    return planes_interval(o, d, PYR_N, PYR_C)


def hit_cylinder(o, d):
    lo, hi = planes_interval(o, d, CUBE_N[4:], np.array([CYL_H, CYL_H]))
    A = d[:, 0] ** 2 + d[:, 1] ** 2
    B = 2 * (o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1])
    C = o[:, 0] ** 2 + o[:, 1] ** 2 - CYL_A**2
    disc, t0, t1 = quad_roots(A, B, C)
    vert = A < 1e-12  # ray parallel to the axis
    inside_vert = C <= 0
    q0 = np.where(vert, np.where(inside_vert, -np.inf, np.inf), np.where(disc >= 0, t0, np.inf))
    q1 = np.where(vert, np.where(inside_vert, np.inf, -np.inf), np.where(disc >= 0, t1, -np.inf))
    return np.maximum(lo, q0), np.minimum(hi, q1)


def hit_cone(o, d):
    s0, s1 = planes_interval(o, d, CUBE_N[4:], np.array([CONE_H, CONE_H]))
    k2 = CONE_K**2
    w0 = CONE_H - o[:, 2]
    A = d[:, 0] ** 2 + d[:, 1] ** 2 - k2 * d[:, 2] ** 2
    B = 2 * (o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1] + k2 * w0 * d[:, 2])
    C = o[:, 0] ** 2 + o[:, 1] ** 2 - k2 * w0**2
    disc, t0, t1 = quad_roots(A, B, C)
    pos = A > 0
    # A > 0: inside the double cone on [t0, t1] (empty if disc < 0).
    a_lo = np.where(disc >= 0, np.maximum(s0, t0), np.inf)
    a_hi = np.where(disc >= 0, np.minimum(s1, t1), -np.inf)
    # A <= 0: inside on (-inf, t0] U [t1, inf) (everywhere if disc < 0); the
    # slab keeps at most one of the two pieces (the other is the upper nappe).
    i1_lo, i1_hi = s0, np.minimum(s1, t0)
    i2_lo, i2_hi = np.maximum(s0, t1), s1
    pick1 = (i1_hi - i1_lo) >= (i2_hi - i2_lo)
    b_lo = np.where(disc < 0, s0, np.where(pick1, i1_lo, i2_lo))
    b_hi = np.where(disc < 0, s1, np.where(pick1, i1_hi, i2_hi))
    return np.where(pos, a_lo, b_lo), np.where(pos, a_hi, b_hi)


def _tilt(v):
    """Rotate vectors from the object frame into the torus's own (untilted) frame."""
    c, s = np.cos(-TOR_TILT), np.sin(-TOR_TILT)
    return np.stack([v[:, 0], c * v[:, 1] - s * v[:, 2], s * v[:, 1] + c * v[:, 2]], axis=1)


def _untilt(v):
    c, s = np.cos(TOR_TILT), np.sin(TOR_TILT)
    return np.stack([v[:, 0], c * v[:, 1] - s * v[:, 2], s * v[:, 1] + c * v[:, 2]], axis=1)


def torus_sdf(p):
    q = np.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2) - TOR_R
    return np.sqrt(q * q + p[:, 2] ** 2) - TOR_r


def hit_torus(o, d, iters=96, eps=2e-4):
    o = _tilt(o)
    d = _tilt(d)
    b0, b1 = hit_sphere(o, d)
    t = np.full(o.shape[0], np.inf)
    idx = np.nonzero(b1 > b0)[0]
    tt = b0[idx].copy()
    tend = b1[idx]
    oo, dd = o[idx], d[idx]
    for _ in range(iters):
        if idx.size == 0:
            break
        p = oo + tt[:, None] * dd
        dist = torus_sdf(p)
        hit = dist < eps
        t[idx[hit]] = tt[hit]
        keep = (~hit) & (tt < tend)
        tt = tt[keep] + dist[keep]
        idx, oo, dd, tend = idx[keep], oo[keep], dd[keep], tend[keep]
    return t, np.where(np.isfinite(t), t, -np.inf)


def normals(shape, p):
    """Outward unit normal at surface points p (object frame, unit bounding sphere)."""
    if shape == "sphere":
        n = p
    elif shape in ("cube", "pyramid"):
        N, C = (CUBE_N, CUBE_C) if shape == "cube" else (PYR_N, PYR_C)
        f = p @ N.T - C[None, :]
        n = N[np.argmax(f, axis=1)]
    elif shape == "cylinder":
        r = np.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2)
        side = (r - CYL_A) > (np.abs(p[:, 2]) - CYL_H)
        n = np.where(
            side[:, None],
            np.stack([p[:, 0], p[:, 1], np.zeros_like(r)], 1),
            np.stack([np.zeros_like(r), np.zeros_like(r), np.sign(p[:, 2])], 1),
        )
    elif shape == "cone":
        r = np.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2)
        side_f = (r - CONE_K * (CONE_H - p[:, 2])) / np.sqrt(1 + CONE_K**2)
        base_f = -p[:, 2] - CONE_H
        side = side_f > base_f
        rr = np.maximum(r, 1e-9)
        ns = np.stack([p[:, 0] / rr, p[:, 1] / rr, np.full_like(r, CONE_K)], 1)
        n = np.where(side[:, None], ns, np.array([[0.0, 0.0, -1.0]]))
    elif shape == "torus":
        q = _tilt(p)
        r = np.maximum(np.sqrt(q[:, 0] ** 2 + q[:, 1] ** 2), 1e-9)
        c = np.stack([q[:, 0] / r * TOR_R, q[:, 1] / r * TOR_R, np.zeros_like(r)], 1)
        n = _untilt(q - c)
    else:
        raise ValueError(shape)
    return n / np.linalg.norm(n, axis=1, keepdims=True)


HIT = {
    "cube": hit_cube,
    "sphere": hit_sphere,
    "cone": hit_cone,
    "cylinder": hit_cylinder,
    "torus": hit_torus,
    "pyramid": hit_pyramid,
}


def camera_rays(elev_deg, azim_deg, dist, fovy_deg, res, ss=SS):
    """World-space camera position and per-sample ray directions (z-up, see PRIOR_CONFIG)."""
    e, a = np.deg2rad(elev_deg), np.deg2rad(azim_deg)
    pos = dist * np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
    fwd = -pos / np.linalg.norm(pos)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    S = np.tan(np.deg2rad(fovy_deg) / 2)
    n = res * ss
    g = (np.arange(n) + 0.5) / n * 2 - 1
    u = g[None, :] * S  # columns, left -> right
    v = -g[:, None] * S  # rows, top -> bottom
    dirs = fwd[None, None, :] + u[..., None] * right[None, None, :] + v[..., None] * up[None, None, :]
    dirs = dirs.reshape(-1, 3)
    return pos, dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


def render_one(shape, albedo, radius, yaw_deg, elev, azim, dist, fovy, light_pos, res, cfg):
    pos, dirs = camera_rays(elev, azim, dist, fovy, res)
    yaw = np.deg2rad(yaw_deg)
    cy, sy = np.cos(-yaw), np.sin(-yaw)
    Rinv = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1.0]])  # world -> object (rotate by -yaw)
    o = (Rinv @ pos) / radius
    d = dirs @ Rinv.T
    O = np.broadcast_to(o, d.shape)
    lo, hi = HIT[shape](O, d)
    hit = (hi >= lo) & (hi > 0) & np.isfinite(lo)
    img = np.ones((d.shape[0], 3)) * np.asarray(cfg["background"])
    if hit.any():
        t = lo[hit]
        p_obj = o[None, :] + t[:, None] * d[hit]
        n_obj = normals(shape, p_obj)
        Rf = Rinv.T  # object -> world
        n = n_obj @ Rf.T
        p = (p_obj * radius) @ Rf.T
        l = light_pos[None, :] - p
        l /= np.linalg.norm(l, axis=1, keepdims=True)
        ndl = np.maximum(0.0, np.einsum("ij,ij->i", n, l))
        sh = cfg["shading"]
        img[hit] = np.asarray(albedo)[None, :] * (sh["diffuse"] * ndl + sh["ambient"])[:, None]
    n = res * SS
    img = img.reshape(res, SS, res, SS, 3).mean(axis=(1, 3))
    alpha = hit.reshape(res, SS, res, SS).mean(axis=(1, 3))
    del n
    return img, alpha


def sample_params(n, seed, cfg, views=1):
    """Every random number of the dataset. views > 1: per-view azimuth and light, [n, views]."""
    rng = np.random.default_rng(seed)
    cam = cfg["camera"]
    P = {
        "shape_id": rng.integers(0, len(SHAPES), n),
        "colour_id": rng.integers(0, len(COLOURS), n),
        "radius": rng.uniform(*cfg["object_radius"], n),
        "yaw_deg": rng.uniform(-180, 180, n),
        "elevation_deg": rng.uniform(*cam["elevation_deg"], n),
        "azimuth_deg": rng.uniform(*cam["azimuth_deg"], n),
        "distance": rng.uniform(*cam["distance"], n),
        "fovy_deg": rng.uniform(*cam["fovy_deg"], n),
    }
    if views > 1:
        # Views 360/V apart from the drawn start, wrapped into [-180, 180).
        az = P["azimuth_deg"][:, None] + 360.0 / views * np.arange(views)[None, :]
        P["azimuth_deg"] = (az + 180.0) % 360.0 - 180.0
    shape = (n, views) if views > 1 else (n,)
    e = np.deg2rad(P["elevation_deg"]).reshape(n, *([1] if views > 1 else []))
    a = np.deg2rad(P["azimuth_deg"])
    d = P["distance"].reshape(n, *([1] if views > 1 else []))
    cam_pos = d[..., None] * np.stack(np.broadcast_arrays(np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)), -1)
    L = cfg["light"]
    ldir = cam_pos + L["perturb"] * rng.standard_normal((*shape, 3))
    ldir /= np.linalg.norm(ldir, axis=-1, keepdims=True)
    P["light_pos"] = ldir * rng.uniform(*L["distance"], shape)[..., None]
    return P


def render_range(args):
    P, lo, hi, cfg = args
    res = cfg["resolution"]
    multi = P["azimuth_deg"].ndim == 2
    views = P["azimuth_deg"].shape[1] if multi else 1
    imgs = np.zeros((hi - lo, views, res, res, 3), np.uint8)
    alph = np.zeros((hi - lo, views, res, res), np.uint8)
    for i in range(lo, hi):
        for v in range(views):
            img, a = render_one(
                SHAPES[P["shape_id"][i]],
                ALBEDOS[COLOURS[P["colour_id"][i]]],
                P["radius"][i],
                P["yaw_deg"][i],
                P["elevation_deg"][i],
                P["azimuth_deg"][i, v] if multi else P["azimuth_deg"][i],
                P["distance"][i],
                P["fovy_deg"][i],
                P["light_pos"][i, v] if multi else P["light_pos"][i],
                res,
                cfg,
            )
            imgs[i - lo, v] = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
            alph[i - lo, v] = np.clip(np.round(a * 255), 0, 255).astype(np.uint8)
    if not multi:
        imgs, alph = imgs[:, 0], alph[:, 0]
    return imgs, alph


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/tiny_shapes_data/train.npz")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--views", type=int, default=1, help="views per object, 360/V degrees apart (the multi-view prior's data); 1: single views")
    ap.add_argument("--config-out", default=None, help="write fsd3d_prior.json here (default: weights/tiny-shapes/)")
    ap.add_argument("--preview", default=None, help="write an 8x8 PNG grid of the first 64 renders")
    args = ap.parse_args()

    cfg = PRIOR_CONFIG
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    cfg_out = args.config_out or os.path.join(repo, "weights", "tiny-shapes", "fsd3d_prior.json")
    write_json(cfg_out, cfg)

    P = sample_params(args.n, args.seed, cfg, args.views)
    t0 = time.time()
    chunk = 250
    ranges = [(P, s, min(s + chunk, args.n), cfg) for s in range(0, args.n, chunk)]
    if args.workers > 1:
        import multiprocessing as mp

        with mp.Pool(args.workers) as pool:
            parts = []
            for k, r in enumerate(pool.imap(render_range, ranges)):
                parts.append(r)
                print(f"rendered {min((k + 1) * chunk, args.n)}/{args.n} in {time.time() - t0:.0f}s", flush=True)
    else:
        parts = []
        for k, r in enumerate(ranges):
            parts.append(render_range(r))
            print(f"rendered {min((k + 1) * chunk, args.n)}/{args.n} in {time.time() - t0:.0f}s", flush=True)
    images = np.concatenate([p[0] for p in parts])
    alpha = np.concatenate([p[1] for p in parts])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(
        args.out,
        images=images,
        alpha=alpha,
        shape_id=P["shape_id"].astype(np.int64),
        colour_id=P["colour_id"].astype(np.int64),
        **{k: P[k].astype(np.float32) for k in ["radius", "yaw_deg", "elevation_deg", "azimuth_deg", "distance", "fovy_deg", "light_pos"]},
    )
    print(f"wrote {args.out}: {images.shape} in {time.time() - t0:.0f}s")
    if args.preview:
        from PIL import Image

        flat = images.reshape(-1, *images.shape[-3:])
        k = min(64, len(flat))
        g = 8 if args.views > 1 else int(np.ceil(np.sqrt(k)))  # multi-view: two objects a row
        res = cfg["resolution"]
        grid = np.full((g * res, g * res, 3), 255, np.uint8)
        for i in range(k):
            r, c = divmod(i, g)
            grid[r * res : (r + 1) * res, c * res : (c + 1) * res] = flat[i]
        Image.fromarray(grid).resize((g * res * 4, g * res * 4), Image.NEAREST).save(args.preview)
        print("preview", args.preview)


if __name__ == "__main__":
    main()

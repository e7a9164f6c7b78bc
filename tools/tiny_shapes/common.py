"""Shared definitions for the tiny-shapes prior: labels, colours, captions, tokenisation.

Everything here is also written to weights/tiny-shapes/fsd3d_prior.json (by
render_dataset.py / train_prior.py), which is what the Rust engine reads.
"""

import json
import os
import time

SHAPES = ["cube", "sphere", "cone", "cylinder", "torus", "pyramid"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]

# Linear albedos in [0,1] (used directly as output RGB; no gamma curve anywhere).
ALBEDOS = {
    "red": [0.85, 0.10, 0.10],
    "green": [0.10, 0.70, 0.15],
    "blue": [0.10, 0.25, 0.90],
    "yellow": [0.95, 0.85, 0.10],
    "purple": [0.55, 0.15, 0.75],
    "orange": [0.95, 0.50, 0.05],
}

# One camera / light / shading distribution, written once into fsd3d_prior.json.
PRIOR_CONFIG = {
    "format": "fsd3d-pixel-prior/1",
    "name": "tiny-shapes",
    "resolution": 32,
    "channels": 3,
    "pixel_range": [-1.0, 1.0],
    "normalisation": "x = rgb * 2 - 1, rgb in [0,1] (uint8 / 255), NCHW, channel order R,G,B",
    "background": [1.0, 1.0, 1.0],
    "up_axis": "z",
    "camera": {
        "elevation_deg": [-10.0, 45.0],
        "elevation_sampling": "uniform in degrees",
        "azimuth_deg": [-180.0, 180.0],
        "azimuth_sampling": "uniform in degrees",
        "distance": [1.7, 2.0],
        "fovy_deg": [40.0, 45.0],
        "look_at": [0.0, 0.0, 0.0],
        "convention": (
            "z-up world. cam_pos = distance * (cos(elev)*cos(azim), cos(elev)*sin(azim), sin(elev)); "
            "the camera looks at the origin: forward = -cam_pos/|cam_pos|, "
            "right = normalize(cross(forward, (0,0,1))), up = cross(right, forward). "
            "fovy is the full vertical field of view, square image (fovx = fovy). "
            "Pixel (row i, col j), i = 0 is the TOP row: with S = tan(fovy/2), "
            "u = ((j + 0.5)/W*2 - 1)*S, v = (1 - (i + 0.5)/H*2)*S, "
            "ray dir = normalize(forward + u*right + v*up). "
            "Azimuth 0 looks from +x towards the origin; azimuth 90 from +y. "
            "No camera/center/up perturbation."
        ),
    },
    "light": {
        "type": "point",
        "direction": "normalize(cam_pos + perturb * N(0, I3))",
        "perturb": 0.5,
        "distance": [0.8, 1.5],
        "position": "light_pos = direction * U(distance)",
        "l_at_surface_point": "l = normalize(light_pos - p)",
        "attenuation": "none",
    },
    "shading": {
        "model": "albedo * (diffuse * max(0, dot(n, l)) + ambient); background where no hit",
        "ambient": 0.25,
        "diffuse": 0.75,
        "supersampling": "4x4 regular grid of ray samples per pixel (a 128x128 render), box-averaged in linear RGB, then quantised to uint8",
    },
    "object_radius": [0.35, 0.55],
    "object_radius_meaning": "radius of the object's bounding sphere, centred at the origin",
    "object_rotation": "uniform random yaw in [-180, 180) degrees about the z (up) axis; the torus is additionally tilted 35 degrees about x before the yaw",
    "shapes": SHAPES,
    "shape_geometry_in_unit_bounding_sphere": {
        "cube": "axis-aligned cube, half-side 1/sqrt(3)",
        "sphere": "radius 1",
        "cone": "apex (0,0,+h), base disc at z=-h of radius a; a = h = 1/sqrt(2)",
        "cylinder": "axis z, radius a, z in [-h, h]; a = h = 1/sqrt(2)",
        "torus": "axis z before tilt, major radius 0.65, minor radius 0.35; tilted 35 deg about x",
        "pyramid": "square base (half-side b = sqrt((1-h^2)/2) ~ 0.566) at z=-h, apex (0,0,+h), h = 0.6",
    },
    "colours": ALBEDOS,
    "colour_order": COLOURS,
    "captions": {
        "full": "'a {colour} {shape}' ('an' before a vowel: 'an orange cube')",
        "variants": ["a {colour} {shape}", "a {shape}", "a {colour} object", "an object", ""],
    },
    # How the engine samples this prior by default (fsd3d sample / prior-check / eval's DDIM row).
    # Measured with `fsd3d prior-check`: guidance 3 with deterministic DDIM follows the colour word
    # but not the shape word; light guidance with the ancestral sampler (eta 1) follows both.
    "sampling": {"steps": 50, "cfg": 1.5, "eta": 1.0},
}

ARTICLE = lambda w: "an" if w[0] in "aeiou" else "a"  # noqa: E731


def caption(shape_id, colour_id):
    """Caption with shape_id / colour_id = -1 meaning 'dropped'."""
    if shape_id < 0 and colour_id < 0:
        return "an object"
    if colour_id < 0:
        s = SHAPES[shape_id]
        return f"{ARTICLE(s)} {s}"
    c = COLOURS[colour_id]
    noun = "object" if shape_id < 0 else SHAPES[shape_id]
    return f"{ARTICLE(c)} {c} {noun}"


def all_caption_words():
    words = {"a", "an", "object"} | set(SHAPES) | set(COLOURS)
    return sorted(words)


BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
UNK = "<unk>"
MAX_LEN = 77


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


class TrainLog:
    """The training scripts' progress: the mean loss of every `every` steps
    appended to `path` (step,loss,lr,sec_per_step,wall) and printed; with
    `bench`, every step's time printed instead and nothing written."""

    def __init__(self, path, every, fresh, bench=False):
        self.path, self.every, self.bench = path, every, bench
        self.start = self.last = time.time()
        self.total, self.count = 0.0, 0
        if fresh and not bench:
            with open(path, "w") as f:
                f.write("step,loss,lr,sec_per_step,wall\n")

    def add(self, step, loss, lr):
        self.total += loss
        self.count += 1
        now = time.time()
        if self.bench:
            print(f"step {step} {now - self.last:.3f}s loss {loss:.4f}", flush=True)
            self.last = now
        elif step % self.every == 0:
            sps = (now - self.last) / self.count
            with open(self.path, "a") as f:
                f.write(f"{step},{self.total / self.count:.6f},{lr:.3e},{sps:.3f},{now:.0f}\n")
            print(f"step {step} loss {self.total / self.count:.4f} {sps:.3f}s/step elapsed {now - self.start:.0f}s", flush=True)
            self.total, self.count, self.last = 0.0, 0, now

    def elapsed(self):
        return time.time() - self.start

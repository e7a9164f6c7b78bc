"""Golden fixture for the DDIM scheduler: diffusers' DDIMScheduler timesteps,
alphas_cumprod and one step's output for several configs (SD 1.x's, SD 2.x's
v-prediction, trailing spacing, clip_sample, a PNDM-style config missing keys).

Run: /opt/fsd3d-venv/bin/python tools/golden/make_scheduler_fixture.py
Writes tests/fixtures/scheduler.json.
"""
import json
import os

import torch
from diffusers import DDIMScheduler

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "scheduler.json")

CONFIGS = {
    "sd15": {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
              "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False},
    "sd21_v": {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
                "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "v_prediction",
                "timestep_spacing": "leading"},
    "trailing_clip": {"beta_schedule": "linear", "clip_sample": True, "timestep_spacing": "trailing"},
    "linspace_cos": {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "linspace", "clip_sample": False},
    "zero_snr": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True,
                  "timestep_spacing": "trailing", "prediction_type": "v_prediction", "clip_sample": False},
    "defaults": {},
}


def main():
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(16, generator=g, dtype=torch.float64) * 1.5
    out = torch.randn(16, generator=g, dtype=torch.float64) * 1.5
    res = {"sample": sample.tolist(), "model_output": out.tolist(), "cases": {}}
    for name, cfg in CONFIGS.items():
        for steps in [7, 50]:
            s = DDIMScheduler.from_config(cfg)
            s.set_timesteps(steps)
            ts = [int(t) for t in s.timesteps]
            t = ts[len(ts) // 2]
            prev = s.step(out.float(), t, sample.float(), eta=0.0).prev_sample
            last = s.step(out.float(), ts[-1], sample.float(), eta=0.0).prev_sample
            res["cases"][f"{name}/{steps}"] = {
                "config": cfg, "steps": steps, "timesteps": ts,
                "alphas_cumprod": [float(s.alphas_cumprod[i]) for i in [0, 1, 250, 500, 998, 999]],
                "final_alpha_cumprod": float(s.final_alpha_cumprod),
                "step_t": t, "prev_sample": prev.tolist(), "last_prev_sample": last.tolist(),
            }
    with open(OUT, "w") as f:
        json.dump(res, f, indent=0)
    print("wrote", OUT)


if __name__ == "__main__":
    main()

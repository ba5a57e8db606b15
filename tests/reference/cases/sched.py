"""Golden cases for the flow-matching samplers (engine/src/sampling/).

Components:
- `flow_schedule`: sigma and timestep schedules for every step count 1-50 and shifts 1-12,
  packed flat, plus how many steps each schedule gives the high-noise expert.
- `flow_step`: a sequence of scheduler steps fed with given (random) flow predictions.
- `denoise_loop`: the two-expert loop with classifier-free guidance, driven exactly as the official
  `WanI2V.generate` (wan/image2video.py) or diffusers' `WanImageToVideoPipeline.__call__` drive
  their scheduler, with an analytic stand-in for the DiT that the Rust runner implements identically:
      flow = gain[expert, branch] * (x - anchor[expert, branch]) + tanh_coef * (t / 1000) * tanh(x)
  The `sched_loop_official_generate_*` cases run `WanI2V.generate` itself with these experts, the
  `sched_loop_diffusers_pipeline_*` cases diffusers' `WanImageToVideoPipeline` itself.

Schedules:
- "official": wan.utils.fm_solvers_unipc.FlowUniPCMultistepScheduler(shift=1) then
  set_timesteps(steps, shift=shift), as image2video.py does.
- "diffusers": diffusers.UniPCMultistepScheduler configured as the Wan2.2 I2V diffusers repository's
  scheduler_config.json (flow_prediction, use_flow_sigmas, flow_shift, order 2, bh2).
- "simple": ComfyUI's "simple" scheduler over ModelSamplingDiscreteFlow (ModelSamplingSD3 shift),
  transcribed here (ComfyUI is not a pip package); timesteps are sigma * 1000 in float32, untruncated.
Euler steps are diffusers' FlowMatchEulerDiscreteScheduler (shift 1, given sigmas):
x + (sigma_next - sigma) * flow.
"""

from __future__ import annotations

import importlib

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from common import seed_everything, write_case
from wan_shims import load_wan

STEPS = list(range(1, 51))
SHIFTS = [float(s) for s in range(1, 13)]
BOUNDARY = 0.9
LATENT_SHAPE = (4, 2, 4, 4)


def official_scheduler(steps: int, shift: float, **unipc):
    load_wan()
    cls = importlib.import_module("wan.utils.fm_solvers_unipc").FlowUniPCMultistepScheduler
    scheduler = cls(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False, **unipc)
    scheduler.set_timesteps(steps, device="cpu", shift=shift)
    return scheduler


def diffusers_scheduler(steps: int, shift: float, **unipc):
    # The Wan2.2-I2V-A14B-Diffusers scheduler_config.json, as diffusers' converter writes it.
    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=1000,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        solver_order=2,
        predict_x0=True,
        solver_type="bh2",
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    if unipc:
        scheduler = UniPCMultistepScheduler.from_config(scheduler.config, **unipc)
    scheduler.set_timesteps(steps, device="cpu")
    return scheduler


def simple_schedule(steps: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI: ModelSamplingDiscreteFlow(shift, multiplier=1000) + simple_scheduler, float32."""
    multiplier = 1000
    t = (torch.arange(1, 1001, 1) / 1000) * multiplier
    t = t / multiplier
    table = t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)
    stride = len(table) / steps
    sigmas = [float(table[-(1 + int(x * stride))]) for x in range(steps)] + [0.0]
    sigmas = torch.FloatTensor(sigmas)
    return sigmas, sigmas[:-1] * multiplier


def diffusers_euler_scheduler(steps: int, shift: float):
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(steps, device="cpu")
    return scheduler


def schedule(kind: str, steps: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas incl. the final 0, timesteps) as the reference computes them."""
    if kind == "diffusers_euler":
        s = diffusers_euler_scheduler(steps, shift)
        return s.sigmas.clone(), s.timesteps.clone()
    if kind == "official":
        s = official_scheduler(steps, shift)
        return s.sigmas.clone(), s.timesteps.clone()
    if kind == "diffusers":
        s = diffusers_scheduler(steps, shift)
        return s.sigmas.clone(), s.timesteps.clone()
    return simple_schedule(steps, shift)


def flow_schedule_cases() -> None:
    for kind in ["official", "diffusers", "simple", "diffusers_euler"]:
        sigmas, timesteps, high = [], [], []
        for shift in SHIFTS:
            row = []
            for steps in STEPS:
                s, t = schedule(kind, steps, shift)
                assert s.dtype == torch.float32 and len(s) == steps + 1
                sigmas.append(s)
                timesteps.append(t)
                # Both pipelines: high-noise expert while t >= boundary * num_train_timesteps.
                row.append(sum(1 for v in t.tolist() if v >= BOUNDARY * 1000))
            high.append(row)
        timesteps_flat = torch.cat(timesteps)
        if kind in ("official", "diffusers"):
            assert timesteps_flat.dtype == torch.int64
        write_case(
            f"sched_schedule_{kind}",
            component="flow_schedule",
            description=f"{kind} sigma/timestep schedules, steps 1-50 x shifts 1-12, packed flat (shift-major)",
            expected={
                "sigmas": torch.cat(sigmas),
                "timesteps": timesteps_flat,
                "high_noise_steps": torch.tensor(high, dtype=torch.int64),
            },
            config={"schedule": kind, "steps": STEPS, "shifts": SHIFTS, "boundary": BOUNDARY},
            rel_l2=1e-7,
            max_abs=1e-6 if kind in ("official", "diffusers") else 1e-4,
        )


class Reference:
    """Drives a reference scheduler the way the pipelines do (step by timestep)."""

    def __init__(self, solver: str, kind: str, steps: int, shift: float, unipc: dict | None = None):
        unipc = unipc or {}
        self.sigmas, self.timesteps = schedule(kind, steps, shift)
        if solver == "unipc":
            if kind == "official":
                self.scheduler = official_scheduler(steps, shift, **unipc)
            elif kind == "diffusers":
                self.scheduler = diffusers_scheduler(steps, shift, **unipc)
            else:
                raise ValueError("UniPC is tested on the official and diffusers schedules")
            self.step_timesteps = self.scheduler.timesteps
        elif kind == "diffusers_euler":
            self.scheduler = diffusers_euler_scheduler(steps, shift)
            self.step_timesteps = self.scheduler.timesteps
        else:
            self.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
            self.scheduler.set_timesteps(sigmas=self.sigmas[:-1].tolist(), device="cpu")
            assert torch.equal(self.scheduler.sigmas, self.sigmas)
            self.step_timesteps = self.scheduler.timesteps

    def step(self, i: int, flow: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        out = self.scheduler.step(flow.unsqueeze(0), self.step_timesteps[i], sample.unsqueeze(0), return_dict=False)[0]
        return out.squeeze(0)


def flow_step_cases() -> None:
    specs = [
        ("unipc", "official", 1, 5.0),
        ("unipc", "official", 2, 5.0),
        ("unipc", "official", 10, 5.0),
        ("unipc", "diffusers", 10, 5.0),
        ("unipc", "official", 50, 12.0),
        ("unipc", "diffusers", 25, 3.0),
        ("euler", "official", 6, 3.0),
        ("euler", "diffusers", 6, 3.0),
        ("euler", "simple", 4, 5.0),
        ("euler", "diffusers_euler", 8, 5.0),
        ("unipc", "official", 12, 5.0, {"solver_order": 3}),
        ("unipc", "diffusers", 9, 4.0, {"solver_order": 3, "solver_type": "bh1"}),
        ("unipc", "official", 8, 2.0, {"solver_order": 1}),
        ("unipc", "official", 8, 5.0, {"disable_corrector": [0, 3]}),
    ]
    for index, (solver, kind, steps, shift, *rest) in enumerate(specs):
        unipc = rest[0] if rest else {}
        seed = 100 + index
        g = seed_everything(seed)
        sample = torch.randn(LATENT_SHAPE, generator=g)
        flows = torch.randn((steps, *LATENT_SHAPE), generator=g)
        # With bh1, both references' last step (to sigma 0) multiplies B(h) = -inf by a zero
        # residual and returns NaN: that case stops one step short (ours returns the x0 estimate).
        taken = steps - 1 if unipc.get("solver_type") == "bh1" else steps
        flows = flows[:taken]
        ref = Reference(solver, kind, steps, shift, unipc)
        x = sample
        outs = []
        for i in range(taken):
            x = ref.step(i, flows[i], x)
            outs.append(x)
        suffix = "".join(f"_{k}{v}" for k, v in unipc.items()).replace(" ", "").replace(",", "-")
        suffix = suffix.replace("[", "").replace("]", "").replace("solver_", "")
        config = {"solver": solver, "schedule": kind, "steps": steps, "shift": shift}
        if unipc:
            config["unipc"] = unipc
        write_case(
            f"sched_step_{solver}_{kind}_{steps}_{int(shift)}{suffix}",
            component="flow_step",
            description=f"{steps} {solver} steps on the {kind} schedule (shift {shift}) with given flows",
            inputs={"sample": sample, "flows": flows},
            expected={"samples": torch.stack(outs)},
            config=config,
            seed=seed,
        )


def analytic_flow(x, t, gain, anchor, tanh_coef):
    return gain * (x - anchor) + (tanh_coef * (t / 1000)) * torch.tanh(x)


def denoise_loop_cases() -> None:
    gains = [0.8, 0.5, 1.1, 0.7]  # high cond, high uncond, low cond, low uncond
    tanh_coef = 0.1
    specs = [
        # name, solver, schedule/guidance flavour, steps, shift, cfg_high_noise, cfg_low_noise
        ("official_unipc_40_5", "unipc", "official", 40, 5.0, 3.5, 3.0),
        ("diffusers_unipc_40_5", "unipc", "diffusers", 40, 5.0, 3.5, 3.0),
        ("official_unipc_10_1", "unipc", "official", 10, 1.0, 4.0, 2.0),
        ("diffusers_unipc_10_1", "unipc", "diffusers", 10, 1.0, 4.0, 2.0),
        ("official_unipc_4_3", "unipc", "official", 4, 3.0, 5.0, 5.0),
        ("diffusers_unipc_4_3", "unipc", "diffusers", 4, 3.0, 5.0, 5.0),
        ("diffusers_unipc_cfg_gate", "unipc", "diffusers", 8, 5.0, 1.0, 3.0),
        ("official_unipc_lightning", "unipc", "official", 4, 5.0, 1.0, 1.0),
        ("simple_euler_4_5", "euler", "simple", 4, 5.0, 1.0, 1.0),
        ("official_euler_12_5", "euler", "official", 12, 5.0, 2.0, 3.0),
        ("diffusers_euler_10_3", "euler", "diffusers_euler", 10, 3.0, 4.0, 3.0),
    ]
    for index, (name, solver, kind, steps, shift, cfg_high, cfg_low) in enumerate(specs):
        seed = 200 + index
        g = seed_everything(seed)
        noise = torch.randn(LATENT_SHAPE, generator=g)
        anchors = torch.randn((4, *LATENT_SHAPE), generator=g) * 0.5
        ref = Reference(solver, kind, steps, shift)
        boundary = BOUNDARY * 1000
        guidance = "diffusers" if kind.startswith("diffusers") else "official"

        def model(x, t, high, cond):
            k = (0 if high else 2) + (0 if cond else 1)
            return analytic_flow(x, t, gains[k], anchors[k], tanh_coef)

        latent = noise
        trajectory, timesteps, high_flags, calls = [], [], [], []
        for i, t in enumerate(ref.timesteps):
            timestep = torch.stack([t])
            high = t.item() >= boundary if guidance == "official" else bool(t >= boundary)
            if guidance == "official":
                # wan/image2video.py: guide_scale = (low, high); lightning (no CFG) when both are 1.
                guide_scale = (cfg_low, cfg_high)
                scale = guide_scale[1] if high else guide_scale[0]
                lightning = cfg_high == 1.0 and cfg_low == 1.0
                do_cfg = not lightning
            else:
                # diffusers: guidance_scale is the high-noise stage, guidance_scale_2 the low one;
                # CFG runs (for both stages) only when guidance_scale > 1.
                scale = cfg_high if high else cfg_low
                do_cfg = cfg_high > 1
            pred = model(latent, timestep, high, True)
            if do_cfg:
                uncond = model(latent, timestep, high, False)
                pred = uncond + scale * (pred - uncond)
            latent = ref.step(i, pred, latent)
            trajectory.append(latent)
            timesteps.append(t)
            high_flags.append(1 if high else 0)
            calls.append(2 if do_cfg else 1)
        expected = {
            "latents": latent,
            "trajectory": torch.stack(trajectory),
            "high_noise": torch.tensor(high_flags, dtype=torch.int64),
        }
        if kind in ("simple", "diffusers_euler"):
            expected["timesteps"] = torch.stack(timesteps).to(torch.float32)
        else:
            expected["timesteps"] = torch.stack(timesteps).to(torch.int64)
        if guidance == "diffusers" or (cfg_high != 1.0 and cfg_low != 1.0) or (cfg_high == cfg_low == 1.0):
            expected["model_calls"] = torch.tensor(calls, dtype=torch.int64)
        write_case(
            f"sched_loop_{name}",
            component="denoise_loop",
            description=f"two-expert {solver} loop, {kind} schedule and guidance, {steps} steps, shift {shift}",
            inputs={"noise": noise, "anchors": anchors},
            expected=expected,
            config={
                "solver": solver,
                "schedule": kind,
                "guidance": guidance,
                "steps": steps,
                "shift": shift,
                "boundary": BOUNDARY,
                "cfg_high_noise": cfg_high,
                "cfg_low_noise": cfg_low,
                "gains": gains,
                "tanh_coef": tanh_coef,
            },
            seed=seed,
        )


def generate() -> None:
    flow_schedule_cases()
    flow_step_cases()
    denoise_loop_cases()
    official_generate_cases()
    diffusers_pipeline_cases()


class _AnalyticExpert(torch.nn.Module):
    """Stands in for one WanModel inside the real WanI2V.generate: same call signature."""

    def __init__(self, high: bool, gains, anchors, tanh_coef, log):
        super().__init__()
        self.high, self.gains, self.anchors, self.tanh_coef, self.log = high, gains, anchors, tanh_coef, log
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, t, context, seq_len, y):
        cond = bool(context[0][0] > 0.5)  # the stub text encoder marks the prompt with 1
        k = (0 if self.high else 2) + (0 if cond else 1)
        self.log.append((x[0].clone(), t.clone(), self.high, cond))
        return [analytic_flow(x[0], t, self.gains[k], self.anchors[k], self.tanh_coef)]


def official_generate_cases() -> None:
    """Runs the official `WanI2V.generate` itself (its real loop, scheduler and expert switch)
    with the analytic experts and stub text encoder/VAE; latents come back through a VAE whose
    decode is the identity."""
    from types import SimpleNamespace

    from PIL import Image

    load_wan()
    image2video = importlib.import_module("wan.image2video")
    gains = [0.8, 0.5, 1.1, 0.7]
    tanh_coef = 0.1
    specs = [
        # name, steps, shift, guide_scale (low, high), lightning
        ("generate_40_5", 40, 5.0, (3.0, 3.5), False),
        ("generate_10_1", 10, 1.0, (2.0, 4.0), False),
        ("generate_lightning_4_5", 4, 5.0, (1.0, 1.0), True),
    ]
    for index, (name, steps, shift, guide_scale, lightning) in enumerate(specs):
        seed = 300 + index
        g = seed_everything(seed)
        frame_num, max_area = 5, 64 * 64
        latent_shape = (16, (frame_num - 1) // 4 + 1, 8, 8)
        anchors = torch.randn((4, *latent_shape), generator=g) * 0.5
        log = []
        pipe = object.__new__(image2video.WanI2V)
        pipe.device = torch.device("cpu")
        pipe.rank, pipe.sp_size = 0, 1
        pipe.vae_stride, pipe.patch_size = (4, 8, 8), (1, 2, 2)
        pipe.num_train_timesteps, pipe.boundary = 1000, BOUNDARY
        pipe.param_dtype = torch.float32
        pipe.t5_cpu, pipe.init_on_cpu, pipe.lightning = True, False, lightning
        pipe.sample_neg_prompt = "negative"
        pipe.text_encoder = lambda prompts, device: [torch.tensor([1.0 if p == "prompt" else 0.0]) for p in prompts]
        lat = latent_shape[1:]
        pipe.vae = SimpleNamespace(
            encode=lambda videos: [torch.zeros(16, *lat) for _ in videos],
            decode=lambda latents: latents,
        )
        pipe.high_noise_model = _AnalyticExpert(True, gains, anchors, tanh_coef, log)
        pipe.low_noise_model = _AnalyticExpert(False, gains, anchors, tanh_coef, log)
        image = Image.new("RGB", (64, 64), (128, 64, 32))
        latents = pipe.generate(
            "prompt", image, max_area=max_area, frame_num=frame_num, shift=shift,
            sample_solver="unipc", sampling_steps=steps, guide_scale=guide_scale,
            n_prompt="", seed=seed, offload_model=False,
        )
        noise = log[0][0]
        cond_calls = [entry for entry in log if entry[3]]
        assert len(cond_calls) == steps
        calls = [sum(1 for e in log if torch.equal(e[1], c[1])) for c in cond_calls]
        write_case(
            f"sched_loop_official_{name}",
            component="denoise_loop",
            description=f"the official WanI2V.generate loop itself, analytic experts, {steps} steps, shift {shift}",
            inputs={"noise": noise, "anchors": anchors},
            expected={
                "latents": latents,
                "timesteps": torch.cat([c[1] for c in cond_calls]).to(torch.int64),
                "high_noise": torch.tensor([1 if c[2] else 0 for c in cond_calls], dtype=torch.int64),
                "model_calls": torch.tensor(calls, dtype=torch.int64),
            },
            config={
                "solver": "unipc",
                "schedule": "official",
                "guidance": "official",
                "steps": steps,
                "shift": shift,
                "boundary": BOUNDARY,
                "cfg_high_noise": guide_scale[1],
                "cfg_low_noise": guide_scale[0],
                "gains": gains,
                "tanh_coef": tanh_coef,
            },
            seed=seed,
        )


class _DiffusersAnalyticExpert(torch.nn.Module):
    """Stands in for one WanTransformer3DModel inside the real WanImageToVideoPipeline."""

    def __init__(self, high: bool, gains, anchors, tanh_coef, log):
        super().__init__()
        self.high, self.gains, self.anchors, self.tanh_coef, self.log = high, gains, anchors, tanh_coef, log
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        from types import SimpleNamespace

        self.config = SimpleNamespace(patch_size=(1, 2, 2), image_dim=None)

    @property
    def dtype(self):
        return torch.float32

    @property
    def device(self):
        return torch.device("cpu")

    def cache_context(self, name):
        import contextlib

        return contextlib.nullcontext()

    def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image=None,
                attention_kwargs=None, return_dict=False):
        x = hidden_states[:, :16]  # the 36-channel input: latents, then mask + image condition
        cond = bool(encoder_hidden_states[0, 0, 0] > 0.5)
        k = (0 if self.high else 2) + (0 if cond else 1)
        self.log.append((x[0].clone(), timestep.clone(), self.high, cond))
        return (analytic_flow(x, timestep, self.gains[k], self.anchors[k], self.tanh_coef),)


class _StubVae(torch.nn.Module):
    def __init__(self):
        super().__init__()
        from types import SimpleNamespace

        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(scale_factor_temporal=4, scale_factor_spatial=8, z_dim=16,
                                      latents_mean=[0.0] * 16, latents_std=[1.0] * 16)

    @property
    def dtype(self):
        return torch.float32

    @property
    def device(self):
        return torch.device("cpu")

    def encode(self, video):
        from types import SimpleNamespace

        b, _, f, h, w = video.shape
        zeros = torch.zeros(b, 16, (f - 1) // 4 + 1, h // 8, w // 8)
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: zeros))


def diffusers_pipeline_cases() -> None:
    """Runs diffusers' WanImageToVideoPipeline.__call__ itself (two transformers, boundary_ratio)
    with the analytic experts, a stub VAE and given prompt embeddings; output_type="latent"."""
    from diffusers import WanImageToVideoPipeline
    from PIL import Image

    gains = [0.8, 0.5, 1.1, 0.7]
    tanh_coef = 0.1
    specs = [
        # name, steps, shift, guidance_scale (high), guidance_scale_2 (low)
        ("pipeline_40_5", 40, 5.0, 3.5, 3.0),
        ("pipeline_4_3", 4, 3.0, 5.0, 2.0),
        ("pipeline_cfg_gate", 8, 5.0, 1.0, 3.0),
    ]
    for index, (name, steps, shift, cfg_high, cfg_low) in enumerate(specs):
        seed = 400 + index
        g = seed_everything(seed)
        latent_shape = (16, 2, 8, 8)
        anchors = torch.randn((4, *latent_shape), generator=g) * 0.5
        log = []
        pipe = WanImageToVideoPipeline(
            tokenizer=None, text_encoder=None, vae=_StubVae(),
            scheduler=diffusers_scheduler(steps, shift),
            transformer=_DiffusersAnalyticExpert(True, gains, anchors, tanh_coef, log),
            transformer_2=_DiffusersAnalyticExpert(False, gains, anchors, tanh_coef, log),
            boundary_ratio=BOUNDARY,
        )
        pipe.set_progress_bar_config(disable=True)
        image = Image.new("RGB", (64, 64), (128, 64, 32))
        out = pipe(
            image=image, prompt_embeds=torch.ones(1, 4, 8), negative_prompt_embeds=torch.zeros(1, 4, 8),
            height=64, width=64, num_frames=5, num_inference_steps=steps, guidance_scale=cfg_high,
            guidance_scale_2=cfg_low, generator=torch.Generator("cpu").manual_seed(seed), output_type="latent",
        )
        latents = out.frames[0]
        noise = log[0][0]
        cond_calls = [entry for entry in log if entry[3]]
        assert len(cond_calls) == steps
        calls = [sum(1 for e in log if torch.equal(e[1], c[1])) for c in cond_calls]
        write_case(
            f"sched_loop_diffusers_{name}",
            component="denoise_loop",
            description=f"diffusers' WanImageToVideoPipeline itself, analytic experts, {steps} steps, shift {shift}",
            inputs={"noise": noise, "anchors": anchors},
            expected={
                "latents": latents,
                "timesteps": torch.cat([c[1] for c in cond_calls]).to(torch.int64),
                "high_noise": torch.tensor([1 if c[2] else 0 for c in cond_calls], dtype=torch.int64),
                "model_calls": torch.tensor(calls, dtype=torch.int64),
            },
            config={
                "solver": "unipc",
                "schedule": "diffusers",
                "guidance": "diffusers",
                "steps": steps,
                "shift": shift,
                "boundary": BOUNDARY,
                "cfg_high_noise": cfg_high,
                "cfg_low_noise": cfg_low,
                "gains": gains,
                "tanh_coef": tanh_coef,
            },
            seed=seed,
        )

"""See AutoLoRA on a toy that runs anywhere: a conditional diffusion model of 2-D points, a LoRA
fine-tuned on six points, and three samplers side by side. About 20 s on two CPU cores.

    python -m lib_autolora.tools.demo [--out autolora-demo.png] [--cfg 3] [--gamma 1.5] [--seed 0]

1. A base model learns four classes of 2-D shapes (ring, grid of blobs, cross, square); labels are
   dropped 10% of the time so it also has an unconditional mode for CFG.
2. A LoRA (rank-4 adapters on every linear layer, base frozen) is fine-tuned on six points of a new
   look for the ring class: a ring of radius 1.2 instead of 0.8, as a style LoRA changes how a
   prompt looks. Six examples are the "few context examples" that give a LoRA its context bias:
   its samples pile up at those six points.
3. The same initial noise is sampled with a deterministic Euler sampler (k-diffusion style over
   Karras sigmas, denoiser outputs x0), prompt = the ring class: (a) the base model with CFG,
   (b) the LoRA model with CFG, (c) AutoLoRA, `autolora(cfg(base, w1), cfg(lora, w2), gamma)` from
   `lib_autolora.core.guidance`, the core the extension uses, with the LoRA switched off for the base
   pass. w1 = w2 = the CFG scale and gamma = 1.5 unless told otherwise, as in the paper.

Figures per sample set (all on the ring prompt, `tolerance` = 0.1):
  diversity   Eq. 8 of the paper with f = the Gaussian kernel's feature map (unit vectors whose
              cosine similarity is exp(-|a - b|^2 / 2 h^2), h = `bandwidth`): 1 - the mean
              pairwise kernel similarity. Piled-up samples lower it, spread-out samples raise it.
  on-domain   fraction of samples within `tolerance` of the LoRA's ring (radius 1.2).
  coverage    fraction of the LoRA's ring (360 points around it) with a sample within `tolerance`.
  near-train  fraction of samples within `tolerance` of one of the LoRA's six points.
  div*on      diversity times on-domain, the toy's Div-X (on-domain plays the VLM score's role).

A LoRA weight that suits one sampler does not suit the other (AutoLoRA with gamma > 1 acts as a
stronger LoRA), so, like Table 1 of the paper, the demo sweeps the LoRA weight for (b) and (c),
prints the whole table, and draws each at its own best weight by div*on. The last line says
whether the paper's claim holds in this run; it depends on the seed (it holds for seeds 0 and 2, not
for seed 1, where LoRA + CFG's best is slightly more diverse), so try a few.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from lib_autolora.core import guidance
from lib_autolora.tools.demo_drawing import draw
from lib_autolora.tools.metrics import diversity_from_similarity
from lib_autolora.tools.toy_model import (
    CENTERS,
    LORA_RADIUS,
    NO_LABEL,
    RING,
    Denoiser,
    lora_examples,
    make_dataset,
    ring,
    train,
)


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    seed: int = 0
    base_steps: int = 3000      # training steps of the base model
    lora_steps: int = 300       # fine-tuning steps of the LoRA
    lora_points: int = 6        # the few examples the LoRA sees
    lora_rank: int = 4
    hidden: int = 128
    batch: int = 512
    samples: int = 800          # samples per sample set
    sampling_steps: int = 32
    cfg: float = 3.0            # CFG scale of (a) and (b); w1 and w2 of (c) unless given
    gamma: float = 1.5
    w1: float | None = None
    w2: float | None = None
    lora_weights: tuple = tuple(round(0.5 + 0.05 * i, 2) for i in range(17))  # 0.5-1.3: the <lora:name:W> swept
    tolerance: float = 0.1
    bandwidth: float = 0.25


SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 20.0, 7.0


def build_models(config: DemoConfig, generator: torch.Generator,
                 rng: np.random.Generator) -> tuple[Denoiser, np.ndarray, np.ndarray]:
    """The base model trained on the four shapes, with a LoRA fine-tuned on the few examples."""
    data, labels = make_dataset(4096, rng)
    points = torch.tensor(data, dtype=torch.float32)
    model = Denoiser(config.hidden, sigma_data=float(points.std()))
    train(model, model.parameters(), points, torch.tensor(labels), config.base_steps, config.batch, 2e-3, generator)
    few = lora_examples(config.lora_points, rng)
    model.requires_grad_(False)
    lora_params = model.add_lora(config.lora_rank, generator)
    with model.lora(1.0):
        train(model, lora_params, torch.tensor(few, dtype=torch.float32), torch.full((len(few),), RING),
              config.lora_steps, config.batch, 5e-3, generator)
    return model, data, few


# ------------------------------------------------------------------------------------ sampling

def karras_sigmas(n: int) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n)
    sigmas = (SIGMA_MAX ** (1 / RHO) + ramp * (SIGMA_MIN ** (1 / RHO) - SIGMA_MAX ** (1 / RHO))) ** RHO
    return torch.cat([sigmas, torch.zeros(1)])


def sample_euler(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
                 sigmas: torch.Tensor) -> torch.Tensor:
    """k-diffusion's sample_euler without churn: Euler steps of dx/dsigma = (x - D(x, sigma)) / sigma."""
    x = noise * sigmas[0]
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - denoise(x, sigma)) / sigma
        x = x + d * (sigma_next - sigma)
    return x


def predict(model: Denoiser, x: torch.Tensor, sigma: torch.Tensor,
            lora_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(unconditional, conditional) predictions for the ring prompt, the LoRA at `lora_weight`."""
    n = len(x)
    labels = torch.cat([torch.full((n,), NO_LABEL), torch.full((n,), RING)])
    with model.lora(lora_weight), torch.no_grad():
        out = model(torch.cat([x, x]), sigma.expand(2 * n, 1), labels)
    return out[:n], out[n:]


def cfg_denoiser(model: Denoiser, lora_weight: float,
                 scale: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(a) with lora_weight 0, (b) otherwise."""
    return lambda x, sigma: guidance.cfg(*predict(model, x, sigma, lora_weight), scale)


def autolora_denoiser(model: Denoiser, lora_weight: float, w1: float, w2: float,
                      gamma: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(c): Algorithm 2 of the paper, through the extension's own guidance core."""
    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        base = guidance.cfg(*predict(model, x, sigma, 0.0), w1)
        lora = guidance.cfg(*predict(model, x, sigma, lora_weight), w2)
        return guidance.autolora(base, lora, gamma)
    return denoise


# ------------------------------------------------------------------------------------- figures

def kernel_diversity(points: np.ndarray, bandwidth: float) -> float:
    """Eq. 8 with the Gaussian kernel's feature map as f: 1 - mean pairwise exp(-|a-b|^2 / 2h^2)."""
    squared = ((points[:, None] - points[None]) ** 2).sum(-1)
    return diversity_from_similarity(np.exp(-squared / (2 * bandwidth ** 2)))


def figures(points: np.ndarray, few: np.ndarray, config: DemoConfig) -> dict[str, float]:
    distance_to_ring = np.abs(np.linalg.norm(points - CENTERS[RING], axis=1) - LORA_RADIUS)
    target = ring(LORA_RADIUS, np.linspace(0, 2 * math.pi, 360, endpoint=False))
    covered = np.linalg.norm(target[:, None] - points[None], axis=2).min(axis=1) < config.tolerance
    near_train = np.linalg.norm(points[:, None] - few[None], axis=2).min(axis=1) < config.tolerance
    result = {
        "diversity": kernel_diversity(points, config.bandwidth),
        "on_domain": float((distance_to_ring < config.tolerance).mean()),
        "coverage": float(covered.mean()),
        "near_train": float(near_train.mean()),
    }
    result["div_on"] = result["diversity"] * result["on_domain"]
    return result


# ----------------------------------------------------------------------------------------- run

@dataclasses.dataclass
class SampleSet:
    method: str          # "base + CFG", "LoRA + CFG" or "AutoLoRA"
    lora_weight: float
    points: np.ndarray
    figures: dict[str, float]

    @property
    def title(self) -> str:
        return self.method if self.method == "base + CFG" else f"{self.method}, LoRA weight {self.lora_weight:g}"


@dataclasses.dataclass
class DemoResult:
    config: DemoConfig
    sets: list[SampleSet]  # every sample set: the base, then (b) and (c) per LoRA weight
    few: np.ndarray        # the LoRA's training points
    data: np.ndarray       # the base model's training points

    def best(self, method: str) -> SampleSet:
        """The sample set of `method` with the highest div*on (the first on a tie)."""
        return max((s for s in self.sets if s.method == method), key=lambda s: s.figures["div_on"])

    def panels(self) -> list[SampleSet]:
        return [self.sets[0], self.best("LoRA + CFG"), self.best("AutoLoRA")]


def run(config: DemoConfig = DemoConfig()) -> DemoResult:
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model, data, few = build_models(config, generator, rng)
    noise = torch.randn(config.samples, 2, generator=generator)
    sigmas = karras_sigmas(config.sampling_steps)
    w1 = config.cfg if config.w1 is None else config.w1
    w2 = config.cfg if config.w2 is None else config.w2

    def sample(method: str, weight: float, denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> SampleSet:
        points = sample_euler(denoise, noise, sigmas).numpy()
        return SampleSet(method, weight, points, figures(points, few, config))

    sets = [sample("base + CFG", 0.0, cfg_denoiser(model, 0.0, config.cfg))]
    for weight in config.lora_weights:
        sets.append(sample("LoRA + CFG", weight, cfg_denoiser(model, weight, config.cfg)))
        sets.append(sample("AutoLoRA", weight, autolora_denoiser(model, weight, w1, w2, config.gamma)))
    return DemoResult(config, sets, few, data)


# -------------------------------------------------------------------------------------- report

def report(result: DemoResult) -> str:
    """Table 1 of the paper, toy version: a row per LoRA weight, LoRA + CFG beside AutoLoRA."""
    c = result.config
    w1 = c.cfg if c.w1 is None else c.w1
    w2 = c.cfg if c.w2 is None else c.w2
    columns = ("diversity", "on_domain", "coverage", "near_train", "div_on")

    def cells(figures: dict[str, float]) -> str:
        return "  ".join(f"{figures[k]:7.3f}" if k in ("diversity", "div_on") else f"{figures[k]:7.0%}"
                         for k in columns)

    head = "  ".join(f"{name:>7}" for name in ("divers.", "on-dom.", "cover.", "n-train", "div*on"))
    base = result.sets[0].figures
    lines = [f"CFG {c.cfg:g}; AutoLoRA gamma {c.gamma:g}, w1 {w1:g}, w2 {w2:g}; {c.samples} samples each; "
             f"diversity = Eq. 8 with Gaussian-kernel features (h {c.bandwidth:g})",
             f"base + CFG: diversity {base['diversity']:.3f}, on-domain {base['on_domain']:.0%}, coverage "
             f"{base['coverage']:.0%}, near-train {base['near_train']:.0%}",
             f"{'':11}| {'LoRA + CFG':<{len(head)}} | AutoLoRA",
             f"{'LoRA weight':11}| {head} | {head}"]
    pairs = [result.sets[i:i + 2] for i in range(1, len(result.sets), 2)]
    for lora, auto in pairs:
        lines.append(f"{lora.lora_weight:11g}| {cells(lora.figures)} | {cells(auto.figures)}")
    peak = {m: max((s for s in result.sets if s.method == m), key=lambda s: s.figures["on_domain"]).lora_weight
            for m in ("LoRA + CFG", "AutoLoRA")}
    lines.append(f"on-domain peaks at LoRA weight {peak['LoRA + CFG']:g} for LoRA + CFG and {peak['AutoLoRA']:g} "
                 f"for AutoLoRA (gamma > 1 acts as a stronger LoRA)")
    lines.append(verdict(result.best("LoRA + CFG"), result.best("AutoLoRA")))
    return "\n".join(lines)


def verdict(lora: SampleSet, auto: SampleSet) -> str:
    """Each at its best LoRA weight: is AutoLoRA more diverse while mostly on the LoRA's domain?"""
    a, b = auto.figures, lora.figures
    failures = [text for failed, text in ((a["diversity"] <= b["diversity"], "AutoLoRA is not more diverse"),
                                          (a["on_domain"] < 0.8, "AutoLoRA is not mostly (80%) on the LoRA's ring"))
                if failed]
    return (f"best div*on: {lora.title}: diversity {b['diversity']:.3f}, on-domain {b['on_domain']:.0%}, "
            f"coverage {b['coverage']:.0%}; {auto.title}: diversity {a['diversity']:.3f}, on-domain "
            f"{a['on_domain']:.0%}, coverage {a['coverage']:.0%}\n"
            "the paper's claim (AutoLoRA more diverse than LoRA + CFG, mostly on the LoRA's domain) "
            + ("does NOT hold here: " + "; ".join(failures) if failures else "HOLDS here"))


# ----------------------------------------------------------------------------------------- CLI

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lib_autolora.tools.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="autolora-demo.png", help="the PNG to write (default autolora-demo.png)")
    for field in dataclasses.fields(DemoConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.name == "lora_weights":
            assert isinstance(field.default, tuple)
            parser.add_argument(flag, type=lambda text: tuple(float(v) for v in text.split(",")), default=field.default,
                                help="comma-separated, default " + ",".join(map(str, field.default)))
        else:
            kind = int if isinstance(field.default, int) else float
            parser.add_argument(flag, type=kind, default=field.default, help=f"default {field.default}")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    config = DemoConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig)})
    torch.set_num_threads(1)  # small matrices: one thread is as fast, and the numbers repeat exactly
    start = time.perf_counter()
    result = run(config)
    draw(result, args.out)
    print(report(result))
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

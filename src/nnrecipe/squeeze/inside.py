"""Pictures of the inside (recipe: "visualize the first-layer weights", activation and update
statistics): the first layer's filters at the start and the end of training, and per-layer
activation statistics on a fixed batch every N epochs.

    inside = Inside(model, fixed_batch, run_dir, tracker)   # before training (epoch 0)
    inside.record(model, epoch, step)                      # every N epochs, after validation
    inside.finish(model, epoch, step)                      # after training: the pictures

record() runs the fixed batch in eval mode without gradients: no random numbers drawn, no
BatchNorm statistics moved, so training is exactly what it would be without it. The pictures
are drawn once, at finish() (matplotlib is the expensive part).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Tanh, nn.Sigmoid,
               nn.Hardswish, nn.Mish)
BOUNDED = {nn.Tanh: (-1.0, 1.0), nn.Sigmoid: (0.0, 1.0)}
SATURATED = 0.97  # a tanh/sigmoid output within 3% of its bounds passes almost no gradient


def first_layer(model: nn.Module) -> nn.Module | None:
    return next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)


def filter_images(model: nn.Module, input_shape, limit: int = 64) -> torch.Tensor | None:
    """The first layer's filters as images [N, C, H, W] in [0, 1], each scaled to its own range:
    conv kernels (first 3 input channels, or the first one), or a Linear layer's weight rows
    shaped like the input image. None when the first layer is neither."""
    layer = first_layer(model)
    if layer is None:
        return None
    w = layer.weight.detach().float().cpu()[:limit]
    if isinstance(layer, nn.Conv2d):
        w = w[:, :3] if w.shape[1] >= 3 else w[:, :1]
    else:
        c, h, wd = input_shape
        if w.shape[1] != c * h * wd:
            return None
        w = w.view(-1, c, h, wd)[:, :3]
    low = w.flatten(1).amin(1).view(-1, 1, 1, 1)
    high = w.flatten(1).amax(1).view(-1, 1, 1, 1)
    return (w - low) / (high - low).clamp_min(1e-12)


class Inside:
    def __init__(self, model: nn.Module, batch: torch.Tensor, run_dir: Path, tracker=None):
        self.batch, self.run_dir, self.tracker = batch.detach(), Path(run_dir), tracker
        self.input_shape = tuple(batch.shape[1:])
        self.start_filters = filter_images(model, self.input_shape)
        self.records: list[dict] = []   # {"epoch", "layers": {name: stats}}
        self.previous: dict[str, torch.Tensor] = {}
        self.previous_step = 0
        self.record(model, 0, 0)

    @torch.no_grad()
    def record(self, model: nn.Module, epoch: int, step: int) -> dict:
        """Per-layer stats of the fixed batch: mean, std, dead (units never positive), saturated
        (tanh/sigmoid near their bounds) and the update ratio |dW| / |W| per step since the
        last record."""
        layers, hooks = {}, []
        for name, module in model.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear, *ACTIVATIONS)):
                # stats inside the hook: an in-place ReLU would overwrite a kept output
                hooks.append(module.register_forward_hook(
                    lambda m, i, o, name=name: layers.__setitem__(
                        name, self._stats(name, m, o.detach(), step))))
        was_training = model.training
        model.eval()
        try:
            model(self.batch)
        finally:
            model.train(was_training)
            for h in hooks:
                h.remove()
        self.previous_step = step
        record = {"epoch": epoch, "step": step, "layers": layers}
        self.records.append(record)
        if self.tracker is not None and step > 0:
            dead = [s["dead"] for s in layers.values() if not math.isnan(s["dead"])]
            ratios = [s["update_ratio"] for s in layers.values()
                      if not math.isnan(s["update_ratio"])]
            self.tracker.log({"inside/dead_max": max(dead, default=0.0),
                              "inside/update_ratio_median": _median(ratios)}, step=step)
        return record

    def _stats(self, name: str, module: nn.Module, out: torch.Tensor, step: int) -> dict:
        o = out.float()
        units = o.transpose(0, 1).flatten(1) if o.ndim > 1 else o.view(1, -1)
        stats = {"mean": o.mean().item(), "std": o.std().item(), "dead": math.nan,
                 "saturated": math.nan, "update_ratio": math.nan}
        if isinstance(module, ACTIVATIONS):  # a unit whose activation is never > 0 is dead
            stats["dead"] = (units.amax(1) <= 0).float().mean().item()
        bounds = next((b for t, b in BOUNDED.items() if isinstance(module, t)), None)
        if bounds is not None:
            low, high = bounds
            edge = (1 - SATURATED) * (high - low)
            stats["saturated"] = ((o < low + edge) | (o > high - edge)).float().mean().item()
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            w = weight.detach().float()
            if name in self.previous and step > self.previous_step:
                before = self.previous[name]
                stats["update_ratio"] = ((w - before).norm() / before.norm().clamp_min(1e-12)
                                         ).item() / (step - self.previous_step)
            self.previous[name] = w.clone()
        return stats

    def finish(self, model: nn.Module, epoch: int, step: int) -> list[Path]:
        """Record the final weights (unless recorded at this step) and draw filters.png and
        activations.png into the run folder (and W&B)."""
        if not self.records or self.records[-1]["step"] != step:
            self.record(model, epoch, step)
        paths = [p for p in (self._filters(model), self._activations()) if p is not None]
        if self.tracker is not None:
            for p in paths:
                self.tracker.image(f"inside/{p.stem}", p, step=step)
        return paths

    def _filters(self, model: nn.Module) -> Path | None:
        end = filter_images(model, self.input_shape)
        if end is None or self.start_filters is None:
            return None
        title = (f"first layer ({type(first_layer(model)).__name__}): start (top) and epoch "
                 f"{self.records[-1]['epoch']} (bottom)")
        return tile_png(self.start_filters, end, self.run_dir / "filters.png", title)

    def _activations(self) -> Path | None:
        if not self.records or not self.records[0]["layers"]:
            return None
        import matplotlib.pyplot as plt

        names = list(self.records[-1]["layers"])
        panels = [("mean", "activation mean"), ("std", "activation std"),
                  ("dead", "dead units\n(activation never > 0)"),
                  ("update_ratio", "|dW|/|W| per step")]
        fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 0.35 * len(names) + 2), 9),
                                 sharex=True)
        cmap = plt.get_cmap("viridis")
        for k, rec in enumerate(self.records):
            color = cmap(k / max(1, len(self.records) - 1))
            for ax, (key, _) in zip(axes, panels):
                ys = [rec["layers"].get(n, {}).get(key, math.nan) for n in names]
                first_or_last = k in (0, len(self.records) - 1)
                ax.plot(range(len(names)), ys, marker=".", color=color,
                        label=f"epoch {rec['epoch']}" if first_or_last else None)
        for ax, (key, label) in zip(axes, panels):
            ax.set_ylabel(label, fontsize=8)
            if key == "update_ratio" and any(
                    s.get(key, 0) > 0 for r in self.records for s in r["layers"].values()):
                ax.set_yscale("log")
                ax.axhline(1e-3, color="grey", lw=0.8, ls="--")  # the recipe's rule of thumb
        axes[0].legend(fontsize=7, loc="upper right")  # the colours go from first to last
        axes[-1].set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        fig.suptitle("activations on a fixed batch (eval mode)", fontsize=9)
        # fixed margins, not tight_layout (which measures every label: 2-3x the drawing time)
        fig.subplots_adjust(left=0.16, right=0.98, top=0.95, bottom=0.14, hspace=0.08)
        path = self.run_dir / "activations.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path


def tile_png(top: torch.Tensor, bottom: torch.Tensor, path: Path, title: str,
             ncols: int = 16) -> Path:
    """Two sets of images [N, C, h, w] in [0, 1] as a grid PNG (top set, a gap, bottom set),
    drawn with PIL: matplotlib's figure machinery cost ~0.15 s for the same picture, a third of
    the budget for pictures of the inside."""
    import numpy as np
    from PIL import Image, ImageDraw

    n, _, h, w = top.shape
    ncols = max(1, min(ncols, n))
    scale = max(1, 32 // max(h, w))   # small kernels (3x3) upscaled to ~32 px
    cell_h, cell_w = h * scale + 4, w * scale + 4
    rows = math.ceil(n / ncols)
    band = 14                          # the title's height
    canvas = np.full((band + (2 * rows) * cell_h + cell_h // 2, ncols * cell_w, 3), 255,
                     dtype=np.uint8)
    for k, images in enumerate((top, bottom)):
        tiles = (images[:, :3].expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy() * 255
                 ).astype(np.uint8).repeat(scale, 1).repeat(scale, 2)
        offset = band + k * (rows * cell_h + cell_h // 2)
        for i, tile in enumerate(tiles):
            r, c = divmod(i, ncols)
            y, x = offset + r * cell_h + 2, c * cell_w + 2
            canvas[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
    image = Image.fromarray(canvas)
    ImageDraw.Draw(image).text((2, 1), title, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] if values else math.nan

"""YOLOv5's detector as icmflow runs it: the layer container and the anchor-based head.

A YOLOv5 checkpoint pickles its model as modules of YOLOv5's code (`models.yolo.Model`,
`models.common.Conv`, ...). icmflow does not run that code: `yolov5_checkpoint` rebuilds the
pickled modules as these classes and ultralytics' `Conv`, `C3`, `Bottleneck`, `SPPF` and
`Concat` (the same blocks, with the same submodule names), from their saved state only.

The architecture, as YOLOv5 describes it: `Model.model` is a sequence of layers, each with its
position `i` and the layers it reads, `f` (-1: the previous layer's output; a list: several,
concatenated by `Concat`); `Model.save` lists the layers whose outputs later layers read. The
last layer, `Detect`, reads three feature maps (strides 8, 16, 32), and predicts at every cell
of each, for each of its `na` anchors, `no = 5 + nc` values: box centre offsets, box size,
objectness and class scores, all through a sigmoid. A cell's centre offset `2σ - 0.5` (in cells)
lets a box centre lie up to half a cell outside its cell; its size is `(2σ)²` times the anchor,
so at most 4× the anchor in each direction. `anchors` are in cells of their level.
"""

from __future__ import annotations

import torch
from torch import nn


class Detect(nn.Module):
    """The anchor-based head: one 1x1 convolution per level (`m`), `na` anchors per cell."""

    def __init__(self, nc: int, anchors: torch.Tensor, channels: list[int], strides: list[float]):
        """`anchors` (levels, na, 2): anchor sizes in pixels of the input image."""
        super().__init__()
        self.nc, self.no = nc, nc + 5
        self.nl, self.na = anchors.shape[:2]
        self.stride = torch.tensor(strides, dtype=torch.float32)
        self.register_buffer("anchors", anchors.float() / self.stride.view(-1, 1, 1))
        self.m = nn.ModuleList(nn.Conv2d(c, self.na * self.no, 1) for c in channels)
        # YOLOv5's own Detect caches its cell grids here (icmflow computes them): kept so that
        # YOLOv5's code reads the model as icmflow saves it
        self.grid = [torch.empty(0)] * self.nl
        self.anchor_grid = [torch.empty(0)] * self.nl
        self.inplace = True

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor] | torch.Tensor:
        """Training: each level's raw outputs (batch, na, h, w, no). Otherwise every cell's
        decoded prediction (batch, cells, no): box centre and size in input pixels, then
        objectness and class probabilities."""
        raw = []
        for conv, x in zip(self.m, features, strict=True):
            batch, _, height, width = x.shape
            out = conv(x).view(batch, self.na, self.no, height, width)
            raw.append(out.permute(0, 1, 3, 4, 2).contiguous())
        if self.training:
            return raw
        return torch.cat([self.decode(level, out) for level, out in enumerate(raw)], 1)

    @staticmethod
    def cells(height: int, width: int, device: torch.device) -> torch.Tensor:
        """(h, w, 2): each cell's x, y index."""
        ys, xs = torch.meshgrid(
            torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
        )
        return torch.stack((xs, ys), -1).float()

    def decode(self, level: int, out: torch.Tensor) -> torch.Tensor:
        batch, na, height, width, no = out.shape
        y = out.sigmoid()
        stride = float(self.stride[level])
        xy = (y[..., :2] * 2 - 0.5 + self.cells(height, width, out.device)) * stride
        wh = (y[..., 2:4] * 2) ** 2 * (self.anchors[level] * stride).view(1, na, 1, 1, 2)
        return torch.cat((xy, wh, y[..., 4:]), -1).view(batch, -1, no)


class Model(nn.Module):
    """The layers in order (`model`), each reading the outputs `f` names; `names`: class names."""

    def __init__(self, layers: list[nn.Module], names: list[str]):
        """Each layer carries `i` (its position) and `f` (what it reads) already."""
        super().__init__()
        self.model = nn.Sequential(*layers)
        self.save = sorted({j % layer.i for layer in layers for j in _sources(layer.f) if j != -1})
        self.names, self.nc = list(names), len(names)
        self.stride = self.detect.stride

    @property
    def detect(self) -> Detect:
        return self.model[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        outputs: list[torch.Tensor | None] = []
        for layer in self.model:
            if layer.f != -1:
                x = (
                    outputs[layer.f]
                    if isinstance(layer.f, int)
                    else [x if j == -1 else outputs[j] for j in layer.f]
                )
            x = layer(x)
            outputs.append(x if layer.i in self.save else None)
        return x


def _sources(f: int | list[int]) -> list[int]:
    return [f] if isinstance(f, int) else list(f)


def class_names(model: Model) -> dict[int, str]:
    """Class index -> name (YOLOv5 keeps `names` as a list, later versions as a dict)."""
    names = model.names
    pairs = names.items() if isinstance(names, dict) else enumerate(names)
    return {int(k): str(v) for k, v in pairs}

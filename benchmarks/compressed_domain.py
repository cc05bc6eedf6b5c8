"""FLOPs after entropy decoding: compressed-domain task heads against decode-then-infer.

The paper-004 setting: a bmshj2018 hyperprior (N, M) and a torchvision ResNet-50 task network on
one image. The compressed-domain path is gate + transform + the ResNet's residual stages + the
task head; the pixel path is `g_s` + the whole task network. Counted with
`torch.utils.flop_counter`: segmentation (DeepLabV3, output stride 8) on meta tensors, so that no
arithmetic runs; detection (Faster R-CNN FPN, no resizing) on the CPU, since its proposal
selection needs real values (random weights: the RPN keeps its full 1000 proposals either way).

    python benchmarks/compressed_domain.py                              # Cityscapes 1024×2048
    python benchmarks/compressed_domain.py --task detection --size 1024 1462
"""

from __future__ import annotations

import argparse

import torch
from compressai.models import ScaleHyperprior
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.models.segmentation import deeplabv3_resnet50

from icmflow.codecs.compressed_domain import (
    CompressedDomainCodec,
    DetectionTail,
    SegmentationTail,
    flops_compared,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("segmentation", "detection"), default="segmentation")
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 2048), metavar=("H", "W"))
    parser.add_argument("--N", type=int, default=128)
    parser.add_argument("--M", type=int, default=192)
    parser.add_argument("--classes", type=int, default=19)
    args = parser.parse_args()
    torch.manual_seed(0)
    h, w = args.size
    if args.task == "segmentation":
        device = "meta"

        def network() -> torch.nn.Module:
            return deeplabv3_resnet50(
                weights=None, weights_backbone=None, num_classes=args.classes, aux_loss=False
            )

        tail, full = SegmentationTail(network()), network().eval()
        infer = full.to(device)
    else:
        device = "cpu"

        def network() -> torch.nn.Module:
            return fasterrcnn_resnet50_fpn(
                weights=None,
                weights_backbone=None,
                num_classes=args.classes,
                min_size=min(h, w),
                max_size=max(h, w),
            )

        tail, full = DetectionTail(network()), network().eval()

        def infer(x_hat: torch.Tensor) -> object:
            return full(list(x_hat))

    model = CompressedDomainCodec(ScaleHyperprior(args.N, args.M), {"task": tail}, "task")
    x = torch.rand(1, 3, h, w, device="cpu").to(device)
    figures = flops_compared(model.to(device), "task", x, infer)
    print(f"{args.task}, image {h}×{w}, hyperprior N={args.N} M={args.M}, ResNet-50")
    print(f"compressed domain: {figures['compressed_domain_flops'] / 1e9:10.1f} GFLOPs")
    print(f"decode then infer: {figures['decode_then_infer_flops'] / 1e9:10.1f} GFLOPs")
    ratio = figures["compressed_domain_flops"] / figures["decode_then_infer_flops"]
    print(f"ratio {ratio:.3f} ({figures['saving_percent']:.1f} % fewer)")


if __name__ == "__main__":
    main()

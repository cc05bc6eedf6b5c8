"""FLOPs after entropy decoding: compressed-domain task heads against decode-then-infer.

The paper-004 setting (`icmflow.codecs.compressed_domain.paper_flops`): a bmshj2018 hyperprior
(N, M) and a torchvision ResNet-50 task network on one image. The compressed-domain path is
gate + transform + the ResNet's residual stages + the task head; the pixel path is `g_s` + the
whole task network. Counted with `torch.utils.flop_counter` on meta tensors, so that no
arithmetic runs (the detector's proposal selection keeps its shapes only: the RPN's full 1000
proposals, as a CPU run with random weights keeps; checked equal to the CPU count at 1024×1472).

    python benchmarks/compressed_domain.py                              # Cityscapes 1024×2048
    python benchmarks/compressed_domain.py --task detection --size 1024 1472 --classes 21
"""

from __future__ import annotations

import argparse

from icmflow.codecs.compressed_domain import paper_flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("segmentation", "detection"), default="segmentation")
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 2048), metavar=("H", "W"))
    parser.add_argument("--N", type=int, default=128)
    parser.add_argument("--M", type=int, default=192)
    parser.add_argument("--classes", type=int, default=19)
    args = parser.parse_args()
    h, w = args.size
    figures = paper_flops(args.task, (h, w), N=args.N, M=args.M, classes=args.classes)
    print(f"{args.task}, image {h}×{w}, hyperprior N={args.N} M={args.M}, ResNet-50")
    print(f"compressed domain: {figures['compressed_domain_flops'] / 1e9:10.1f} GFLOPs")
    print(f"decode then infer: {figures['decode_then_infer_flops'] / 1e9:10.1f} GFLOPs")
    ratio = figures["compressed_domain_flops"] / figures["decode_then_infer_flops"]
    print(f"ratio {ratio:.3f} ({figures['saving_percent']:.1f} % fewer)")


if __name__ == "__main__":
    main()

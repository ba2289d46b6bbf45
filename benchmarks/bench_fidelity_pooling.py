"""What the authors' grid pooling and DIML-trained global vector change (docs/FIDELITY.md rows 2 and 3).

Random post-ReLU 7 x 7 maps (resnet50 at 224 px), 256 channels, a random 128-d head, 48 images:
``python benchmarks/bench_fidelity_pooling.py`` prints the relative change of the cells (align_corners True vs
False), of the test-time structural similarity ``sum T S``, and of the global vector (cell mean vs map mean).
"""

import torch
import torch.nn.functional as F

from diml import ot
from diml.models import pool_to_grid


def main() -> None:
    torch.manual_seed(0)
    b, c, d = 48, 256, 128
    fmap = F.relu(torch.randn(b, c, 7, 7))
    head = torch.randn(d, c) / c ** 0.5

    def cells(align: bool) -> torch.Tensor:
        return torch.einsum("dc,bcr->bdr", head, pool_to_grid(fmap, 4, align_corners=align).flatten(2))

    ours, other = cells(True), cells(False)
    rel = (ours - other).norm(dim=(1, 2)) / ours.norm(dim=(1, 2))
    print(f"cells, align_corners True vs False: relative L2 median {rel.median():.3f}, max {rel.max():.3f}")
    g_map = fmap.mean((2, 3)) @ head.T

    def similarity(local: torch.Tensor) -> torch.Tensor:
        m = ot.match(local, g_map, local, g_map)
        return (m.plan * m.cell_sim).sum((-1, -2))

    diff = (similarity(ours) - similarity(other)).abs()[~torch.eye(b, dtype=torch.bool)]
    print(f"structural similarity sum T S: |difference| median {diff.median():.2e}, max {diff.max():.2e}")
    g_cell = ours.mean(2)
    relg = (g_cell - g_map).norm(dim=1) / g_map.norm(dim=1)
    cos = F.cosine_similarity(g_cell, g_map, dim=1)
    print(f"global vector, cell mean vs map mean: relative L2 median {relg.median():.3f}, max {relg.max():.3f}, "
          f"cosine min {cos.min():.4f}")


if __name__ == "__main__":
    main()

"""Progress bars: on only when asked (command lines), off by default (Ray workers); the numbers do not change."""

import torch

from diml.evaluation import evaluate, extract_embeddings
from diml.models import Embeddings


class _Cells(torch.nn.Module):
    """``(B, 3, 4, 4) -> Embeddings((B, 3), (B, 3, 4))``: 2x2 average-pooled cells and their mean."""

    def forward(self, images):
        cells = torch.nn.functional.avg_pool2d(images, 2).flatten(2)
        return Embeddings(cells.mean(2), cells)


def _dataset(n=12):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, 4, 4, generator=g)
    return [(images[i], i % 3) for i in range(n)]


def test_extraction_and_reranking_bars_only_when_asked(capsys):
    quiet = extract_embeddings(_Cells(), _dataset(), batch_size=5, device="cpu")
    assert capsys.readouterr().err == ""
    shown = extract_embeddings(_Cells(), _dataset(), batch_size=5, device="cpu", progress=True)
    assert "embedding" in capsys.readouterr().err
    torch.testing.assert_close(shown.global_emb, quiet.global_emb, rtol=0, atol=0)
    torch.testing.assert_close(shown.local_emb, quiet.local_emb, rtol=0, atol=0)

    args = (quiet.global_emb, quiet.labels, quiet.local_emb)
    plain = evaluate(*args, depths=(3,), ks=(1,), nmi=False, pair_chunk=4)
    assert capsys.readouterr().err == ""
    with_bar = evaluate(*args, depths=(3,), ks=(1,), nmi=False, pair_chunk=4, progress=True)
    err = capsys.readouterr().err
    assert "re-ranking" in err and "chunk" in err
    assert with_bar == plain

"""The worker server of `o2v-batch serve`: transform's server, plus the one thing a
request may ask per call, `infer_max_seqlens` in its content type. Runs inside a
worker process (it imports torch)."""

from __future__ import annotations

from collections.abc import Sequence

from o2v_batch.protocol import BatchResult, ServingOptions
from o2v_batch.serve_requests import seqlens_of
from o2v_batch.serving import Server


class InvocationServer(Server):
    """Serves one request per mini-batch, capping sequence lengths as its content type asks."""

    def __init__(self, model_dir: str, device: str, options: ServingOptions) -> None:
        super().__init__(model_dir, device, options)
        self.model_max_lens = list(self.max_lens)

    def serve(
        self, positions: Sequence[int], records: Sequence[bytes], content_type: str, accept: str
    ) -> BatchResult:
        # Server reads max_lens as it embeds each mini-batch: the caps of this request
        # apply to it alone, as transform's --infer-max-seqlens caps the model's lengths.
        caps = seqlens_of(content_type)
        self.max_lens = (
            self.model_max_lens
            if caps is None
            else [min(m, c) for m, c in zip(self.model_max_lens, caps, strict=True)]
        )
        return super().serve(positions, records, content_type, accept)


def create_server(
    model_dir: str, device: str, options: ServingOptions, threads: int
) -> InvocationServer:
    """The worker factory of `serve` (serve.WORKER_FACTORY): torch's threads, then the model."""
    import torch

    torch.set_num_threads(threads)
    return InvocationServer(model_dir, device, options)

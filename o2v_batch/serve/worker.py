"""The worker server of `o2v-batch serve`: transform's server, plus the one thing a
request may ask per call, `infer_max_seqlens` in its content type. Runs inside a
worker process: a whole worker's (create_server imports torch) or, on a GPU, a host
worker's (create_host_server, no torch: its device process runs the forward passes)."""

from __future__ import annotations

from o2v_batch.execution.device_link import RemoteForward
from o2v_batch.execution.inference import Server
from o2v_batch.execution.protocol import ServingOptions
from o2v_batch.serve.invocations import seqlens_of


class InvocationServer(Server):
    """Serves one request per mini-batch, capping sequence lengths as its content type asks."""

    def max_lens_for(self, content_type: str) -> list[int]:
        # A request's caps apply to it alone, as transform's --infer-max-seqlens caps
        # the model's lengths.
        caps = seqlens_of(content_type)
        if caps is None:
            return self.max_lens
        return [min(m, c) for m, c in zip(self.max_lens, caps, strict=True)]


def create_server(
    model_dir: str, device: str, options: ServingOptions, threads: int
) -> InvocationServer:
    """The worker factory of `serve` (server.WORKER_FACTORY): torch's threads, then the model."""
    import torch

    torch.set_num_threads(threads)
    return InvocationServer(model_dir, device, options)


def create_host_server(
    model_dir: str, device: str, options: ServingOptions, threads: int, link: int
) -> InvocationServer:
    """The host worker factory of `serve` (server.HOST_FACTORY): the forward passes in
    the device process at the other end of `link`."""
    return InvocationServer(model_dir, device, options, RemoteForward(model_dir, link))

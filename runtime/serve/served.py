"""What both APIs share: the served models, a job of one call per seed run through the worker (its
client's disconnect cancels it), errors as JSON, and the cheap latent preview."""

import asyncio
import base64
import secrets
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse
from PIL import Image

from edgesd.denoise import Callback
from edgesd.errors import InvalidInputError
from edgesd.limits import MAX_PIXELS
from edgesd.outputs import png_bytes
from edgesd.pipelines import Img2ImgPipeline, InpaintPipeline
from edgesd.pipelines.base import Result
from edgesd.serve.worker import Cancelled, Job, QueueFull, Worker


@dataclass
class Served:
    """The loaded models by name, the one requests get unless they say otherwise, and the limits."""
    models: dict[str, Img2ImgPipeline]
    current: str = ""
    max_pixels: int = MAX_PIXELS
    max_body: int = 64 * 2**20
    api_key: str | None = None
    queue_size: int = 4
    inpainters: dict = field(default_factory=dict)

    def __post_init__(self):
        self.current = self.current or next(iter(self.models))

    def title(self, name: str) -> str:
        return f"{name} [{self.hash(name)}]"

    def hash(self, name: str) -> str:
        return self.models[name].provenance["manifest_sha256"][:10]

    def find(self, title: str) -> str:
        for name in self.models:
            if title in (name, self.title(name)):
                return name
        raise InvalidInputError(f"no served model {title!r}; served: {', '.join(map(self.title, self.models))}")

    def inpainter(self, name: str) -> InpaintPipeline:
        if name not in self.inpainters:
            self.inpainters[name] = InpaintPipeline.from_pipe(self.models[name])
        return self.inpainters[name]


def seeds(first: int | None, count: int) -> list[int]:
    """Image i's seed: first + i (A1111's rule), `first` random when None."""
    first = secrets.randbelow(2**32) if first is None else first
    if first + count - 1 > 2**64 - 1:
        raise InvalidInputError(f"seed {first} with {count} images goes past the largest seed, 2**64 - 1")
    return [first + i for i in range(count)]


_ERRORS = {400: "BadRequest", 401: "Unauthorized", 409: "Conflict", 413: "PayloadTooLarge", 422: "Unprocessable",
           429: "TooManyRequests", 503: "Unavailable"}


def error(status: int, detail: str, **headers) -> JSONResponse:
    return JSONResponse({"error": _ERRORS.get(status, "Error"), "detail": detail}, status, headers=headers)


class HttpError(Exception):
    """An answer other than 200, with what went wrong (and headers, e.g. Retry-After)."""

    def __init__(self, status: int, detail: str, **headers):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def per_seed(call: Callable[[int, Callback], Result], all_seeds: list[int],
             finish: Callable[[Image.Image], Image.Image] | None = None) -> Callable[[Job], tuple[list, bool]]:
    """A job of one call per seed (A1111's batch rule: each image reproducible alone), stopping at an
    interrupt: ([(image, its parameters)], interrupted)."""
    def work(job: Job):
        made = []
        for seed in all_seeds:
            result = call(seed, job.callback)
            if result.cancelled:
                break
            image = result.images[0]
            made.append((image if finish is None else finish(image), {**result.parameters, "index": 0}))
            if job.interrupted:
                return made, True
            job.next_part()
        return made, False
    return work


async def run_job(worker: Worker, work, parts: int, model: str, request: Request, id: str | None = None):
    """Queue the job and wait for its result; a full queue is a 429, a client that disconnects cancels it."""
    try:
        job = worker.submit(work, parts, model, id)
    except QueueFull as full:
        raise HttpError(429, str(full), **{"Retry-After": str(full.retry_after)}) from None
    except ValueError as taken:
        raise HttpError(409, str(taken)) from None
    future = asyncio.wrap_future(job.future)
    try:
        while True:
            done, _ = await asyncio.wait({future}, timeout=0.25)
            if done:
                return future.result()
            if await request.is_disconnected():
                job.cancelled = True
                raise Cancelled("the client disconnected")
    except Cancelled as e:
        raise HttpError(503, f"the job was cancelled: {e}") from None


_LATENT_RGB = {"sd": np.array([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]],
                              np.float32),
               "sdxl": np.array([[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362],
                                 [-0.3165, -0.2492, -0.2188]], np.float32)}


def preview(job: Job, served: Served) -> str | None:
    """The current latents as a small PNG by A1111's cheap approximation (a linear map of the 4 latent
    channels to RGB): no VAE call, so polling costs nothing."""
    latents = job.latents
    family = served.models[job.model].family.name
    if latents is None or latents.shape[1] != 4 or family not in _LATENT_RGB:
        return None
    rgb = np.einsum("chw,cr->hwr", latents[0], _LATENT_RGB[family])
    pixels = np.clip((rgb + 1) * 127.5, 0, 255).astype(np.uint8)
    return base64.b64encode(png_bytes(Image.fromarray(pixels), {})).decode()

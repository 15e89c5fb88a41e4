"""The HTTP application: AUTOMATIC1111's API routes over the served pipelines, one job at a time.

Every bad input is a 4xx JSON answer saying what is wrong ({"error", "detail"}), never a traceback;
clients never name a file-system path; a client that disconnects cancels its job; a full queue is a 429
with Retry-After. With an API key, every route asks for it (Bearer, X-API-Key, or HTTP Basic's password:
webuiapi's set_auth).
"""

import asyncio
import contextlib
import base64
import hmac
import logging
import time
from dataclasses import dataclass, field

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image

from edgesd import schedulers
from edgesd.errors import EdgesdError, InvalidInputError
from edgesd.limits import MAX_PIXELS
from edgesd.outputs import png_bytes
from edgesd.pipelines import Img2ImgPipeline, InpaintPipeline
from edgesd.serve import a1111
from edgesd.serve.worker import Cancelled, Job, QueueFull, Worker

log = logging.getLogger("edgesd")


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


def error(status: int, detail: str, **headers) -> JSONResponse:
    return JSONResponse({"error": {400: "BadRequest", 401: "Unauthorized", 413: "PayloadTooLarge", 422: "Unprocessable",
                                   429: "TooManyRequests", 503: "Unavailable"}.get(status, "Error"), "detail": detail},
                        status, headers=headers)


def create_app(served: Served) -> FastAPI:
    worker = Worker(served.queue_size)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        worker.close()  # the running job cancelled, the waiting ones too; nothing was written to disk

    app = FastAPI(title="edgesd", summary="Stable Diffusion img2img on the edge: AUTOMATIC1111's API", lifespan=lifespan)
    app.state.worker = worker

    app.add_middleware(_Guard, served=served)  # pure ASGI: BaseHTTPMiddleware would hide a client's disconnect

    @app.exception_handler(EdgesdError)
    async def refused_input(request: Request, exc: EdgesdError):
        return error(422, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return error(422, problems)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):
        log.error("request failed: %s: %s", type(exc).__name__, exc)
        return error(500, f"{type(exc).__name__} while serving the request; the server goes on")

    @app.post("/sdapi/v1/img2img")
    async def img2img(body: a1111.Img2ImgRequest, request: Request):
        if (why := a1111.refused(body)) is not None:
            return error(422, why)
        name = served.find(body.override_settings["sd_model_checkpoint"]) if "sd_model_checkpoint" in body.override_settings \
            else served.current
        image = a1111.resized(a1111.decode(body.init_images[0], "init_images[0]", served.max_pixels), body.width, body.height,
                              body.resize_mode)
        mask = a1111.prepared_mask(body, image.size, served.max_pixels)
        sampler, all_seeds = a1111.sampler_of(body), a1111.seeds(body)
        work = _batch(served, name, body, image, mask, sampler, all_seeds)
        try:
            job = worker.submit(work, parts=len(all_seeds))
        except QueueFull as full:
            return error(429, str(full), **{"Retry-After": str(full.retry_after)})
        try:
            images, interrupted = await _wait(job, request)
        except Cancelled as e:
            return error(503, f"the job was cancelled: {e}")
        shown = sampler or served.models[name].folder.scheduler_config["_class_name"]
        texts = [a1111.infotext(body, seed, shown, name, image.size) for seed in all_seeds[:len(images)]]
        encoded = [base64.b64encode(png_bytes(im, params, {"parameters": text})).decode()
                   for (im, params), text in zip(images, texts)]
        return {"images": encoded, "parameters": a1111.echoed(body),
                "info": a1111.info(body, all_seeds, shown, name, served.hash(name), texts, interrupted)}

    @app.get("/sdapi/v1/sd-models")
    def sd_models():
        return [{"title": served.title(n), "model_name": n, "hash": served.hash(n),
                 "sha256": p.provenance["manifest_sha256"], "filename": n, "config": None} for n, p in served.models.items()]

    @app.get("/sdapi/v1/samplers")
    def samplers():
        return [{"name": n, "aliases": list(aliases), "options": {}} for n, (_, _, aliases) in schedulers.SAMPLERS.items()]

    @app.get("/sdapi/v1/schedulers")
    def schedule_types():
        return [{"name": "automatic", "label": "Automatic"}, {"name": "karras", "label": "Karras"}]

    @app.get("/sdapi/v1/scripts")
    def scripts():  # webuiapi asks at start; none are run here
        return {"txt2img": [], "img2img": []}

    @app.get("/sdapi/v1/options")
    def options():
        return {"sd_model_checkpoint": served.title(served.current), "sd_checkpoint_hash": served.hash(served.current),
                "samples_format": "png"}

    @app.post("/sdapi/v1/options")
    def set_options(body: dict):
        if "sd_model_checkpoint" in body:
            served.current = served.find(str(body["sd_model_checkpoint"]))
        return {}

    @app.get("/sdapi/v1/progress")
    def progress(skip_current_image: bool = False):
        job = worker.current
        if job is None:
            return {"progress": 0.0, "eta_relative": 0.0, "state": {"job_count": worker.waiting, "interrupted": False,
                                                                   "sampling_step": 0, "sampling_steps": 0},
                    "current_image": None, "textinfo": None}
        elapsed = time.time() - (job.started or time.time())
        done = job.progress
        return {"progress": done, "eta_relative": elapsed / done - elapsed if done > 0 else 0.0,
                "state": {"job": job.id, "job_count": worker.waiting + 1, "job_no": job.part, "interrupted": job.interrupted,
                          "sampling_step": job.step, "sampling_steps": job.steps},
                "current_image": None if skip_current_image else _preview(job, served), "textinfo": None}

    @app.post("/sdapi/v1/interrupt")
    def interrupt():
        worker.interrupt()
        return {}

    return app


class _Guard:
    """Every request: its API key (when the server has one), its declared size."""

    def __init__(self, app, served: Served):
        self.app, self.served = app, served

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get("content-length")
        if self.served.api_key is not None and not _authorized(headers, self.served.api_key):
            answer = error(401, "this server needs its API key (Authorization: Bearer KEY, X-API-Key, or basic auth)",
                           **{"WWW-Authenticate": 'Basic realm="edgesd"'})
        elif length is not None and (not length.isdigit() or int(length) > self.served.max_body):
            answer = error(413, f"the request is over {self.served.max_body // 2**20} MiB")
        else:
            return await self.app(scope, receive, send)
        await answer(scope, receive, send)


def _authorized(headers: dict, key: str) -> bool:
    given = headers.get("x-api-key")
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        given = value
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(value).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return False
    return given is not None and hmac.compare_digest(given.encode(), key.encode())


def _batch(served: Served, name: str, body: a1111.Img2ImgRequest, image: Image.Image, mask, sampler, all_seeds: list[int]):
    """The job: one call per image (seed + i), stopping at an interrupt; [(image, its parameters)], interrupted."""
    def work(job: Job):
        pipe = served.models[name] if mask is None else served.inpainter(name)
        extra = {} if mask is None else {"mask_image": mask, "padding_mask_crop": body.inpaint_full_res_padding
                                         if body.inpaint_full_res else None}
        made = []
        for k, seed in enumerate(all_seeds):
            result = pipe(image, **extra, prompt=body.prompt, negative_prompt=body.negative_prompt or None,
                          strength=body.denoising_strength, num_inference_steps=body.steps, guidance_scale=body.cfg_scale,
                          seed=seed, scheduler=sampler, size=image.size, callback=job.callback)
            if result.cancelled:
                break
            generated = result.images[0]
            if mask is not None:  # A1111's overlay: the input kept outside the (blurred) mask
                generated = Image.composite(generated, image, mask)
            made.append((generated, {**result.parameters, "index": 0}))
            if job.interrupted:
                return made, True
            job.next_part()
        return made, False
    return work


async def _wait(job: Job, request: Request):
    """The job's result; a client that disconnects meanwhile cancels it."""
    future = asyncio.wrap_future(job.future)
    while True:
        done, _ = await asyncio.wait({future}, timeout=0.25)
        if done:
            return future.result()
        if await request.is_disconnected():
            job.cancelled = True
            raise Cancelled("the client disconnected")


_LATENT_RGB = {"sd": np.array([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]],
                              np.float32),
               "sdxl": np.array([[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362],
                                 [-0.3165, -0.2492, -0.2188]], np.float32)}


def _preview(job: Job, served: Served) -> str | None:
    """The current latents as a small PNG by A1111's cheap approximation (a linear map of the 4 latent
    channels to RGB): no VAE call, so polling costs nothing."""
    latents = job.latents
    family = served.models[served.current].family.name
    if latents is None or latents.shape[1] != 4 or family not in _LATENT_RGB:
        return None
    rgb = np.einsum("chw,cr->hwr", latents[0], _LATENT_RGB[family])
    pixels = np.clip((rgb + 1) * 127.5, 0, 255).astype(np.uint8)
    return base64.b64encode(png_bytes(Image.fromarray(pixels), {})).decode()

"""The HTTP application: the page at /, AUTOMATIC1111's API routes (/sdapi/v1) and edgesd's own
(/edgesd/v1, edgesd.serve.native) over the served pipelines, one job at a time.

Every bad input is a 4xx JSON answer saying what is wrong ({"error", "detail"}), never a traceback;
clients never name a file-system path; a client that disconnects cancels its job; a full queue is a 429
with Retry-After. With an API key, every route asks for it (Bearer, X-API-Key, or HTTP Basic's password:
webuiapi's set_auth).
"""

import base64
import contextlib
import hmac
import importlib.resources
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image

from edgesd import schedulers
from edgesd.errors import EdgesdError
from edgesd.outputs import png_bytes
from edgesd.serve import a1111, native
from edgesd.serve.served import HttpError, Served, error, per_seed, preview, run_job, seeds
from edgesd.serve.worker import Worker

PAGE = importlib.resources.files("edgesd.serve") / "page"

log = logging.getLogger("edgesd")


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

    @app.exception_handler(HttpError)
    async def answered(request: Request, exc: HttpError):
        return error(exc.status, exc.detail, **exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return error(422, problems)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):
        log.error("request failed: %s: %s", type(exc).__name__, exc)
        return error(500, f"{type(exc).__name__} while serving the request; the server goes on")

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(PAGE / "index.html")

    app.mount("/page", StaticFiles(directory=str(PAGE)), name="page")
    native.add_routes(app, served, worker)

    @app.post("/sdapi/v1/img2img")
    async def img2img(body: a1111.Img2ImgRequest, request: Request):
        if (why := a1111.refused(body)) is not None:
            return error(422, why)
        name = served.find(body.override_settings["sd_model_checkpoint"]) if "sd_model_checkpoint" in body.override_settings \
            else served.current
        image = a1111.resized(a1111.decode(body.init_images[0], "init_images[0]", served.max_pixels), body.width, body.height,
                              body.resize_mode)
        mask = a1111.prepared_mask(body, image.size, served.max_pixels)
        sampler, all_seeds = a1111.sampler_of(body), seeds(None if body.seed == -1 else body.seed, body.batch_size * body.n_iter)
        pipe = served.models[name] if mask is None else served.inpainter(name)
        extra = {} if mask is None else {"mask_image": mask, "masked_content": a1111.MASKED_CONTENT[body.inpainting_fill],
                                         "padding_mask_crop": body.inpaint_full_res_padding if body.inpaint_full_res else None}
        call = lambda seed, callback: pipe(  # noqa: E731
            image, **extra, prompt=body.prompt, negative_prompt=body.negative_prompt or None, strength=body.denoising_strength,
            num_inference_steps=body.steps, guidance_scale=body.cfg_scale, seed=seed, scheduler=sampler, size=image.size,
            callback=callback)
        overlay = None if mask is None else lambda made: Image.composite(made, image, mask)  # A1111's: the input kept outside
        images, interrupted = await run_job(worker, per_seed(call, all_seeds, overlay), len(all_seeds), name, request)
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
                "current_image": None if skip_current_image else preview(job, served), "textinfo": None}

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

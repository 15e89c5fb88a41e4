"""edgesd's own endpoint, with the Python API's names (strength, guidance_scale, num_inference_steps,
scheduler, num_images, outpaint extents): what the page uses, and cleaner for new clients than A1111's.

`POST /edgesd/v1/generate` runs img2img, inpainting (with `mask`) or outpainting (with `outpaint`) on a
served model and answers the same pixels as the Python API for the same settings. Variations are one
call per image with seed + i, so each is reproducible alone; each PNG carries its parameters, so a
downloaded result replays (`edgesd img2img --replay`). An input larger than the model's native area is
processed at that area (aspect kept) unless `width`/`height` say otherwise: phone photos stay fast.
A client names its job (`task_id`) to follow it (`GET /edgesd/v1/progress/{task_id}`); closing the
request cancels it.
"""

import base64
from typing import Literal

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgesd.image import within_area
from edgesd.limits import MAX_GUIDANCE, MAX_IMAGES, MAX_SIDE, MAX_STEPS
from edgesd.outputs import png_bytes
from edgesd.schema import MASKED_CONTENT
from edgesd.serve import a1111
from edgesd.serve.served import HttpError, Served, per_seed, preview, run_job, seeds
from edgesd.serve.worker import Worker

TASK_ID = r"^[A-Za-z0-9_-]{1,64}$"


class Extents(BaseModel):
    model_config = ConfigDict(extra="forbid")
    left: int = Field(0, ge=0, le=MAX_SIDE)
    right: int = Field(0, ge=0, le=MAX_SIDE)
    top: int = Field(0, ge=0, le=MAX_SIDE)
    bottom: int = Field(0, ge=0, le=MAX_SIDE)


class GenerateRequest(BaseModel):
    """None means the model's recommended value, as in the Python API."""
    model_config = ConfigDict(extra="forbid")

    image: str = Field(description="The input: a PNG, JPEG or WebP, base64 (a data: URL is fine)")
    prompt: str = Field("", max_length=10_000)
    negative_prompt: str | None = Field(None, max_length=10_000)
    strength: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    num_inference_steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    guidance_scale: float | None = Field(None, ge=0, le=MAX_GUIDANCE, allow_inf_nan=False)
    scheduler: str | None = Field(None, max_length=100, description="A scheduler class or sampler name (\"DPM++ 2M Karras\")")
    seed: int | None = Field(None, ge=0, le=2**64 - 1, description="Image i gets seed + i; none: a random one")
    num_images: int = Field(1, ge=1, le=MAX_IMAGES, description="Variations, one call each")
    width: int | None = Field(None, ge=8, le=MAX_SIDE)
    height: int | None = Field(None, ge=8, le=MAX_SIDE)
    mask: str | None = Field(None, description="White repaints, black keeps (base64 image): inpainting")
    padding_mask_crop: int | None = Field(None, ge=0, le=MAX_SIDE)
    masked_content: Literal[MASKED_CONTENT] = Field("original", description="What the masked area starts from")
    outpaint: Extents | None = Field(None, description="Pixels to add on each side: outpainting")
    model: str | None = Field(None, description="A served model (GET /edgesd/v1/models); none: the current one")
    task_id: str | None = Field(None, pattern=TASK_ID, description="The client's name for the job, to follow its progress")

    @model_validator(mode="after")
    def one_task(self):
        if self.mask is not None and self.outpaint is not None:
            raise ValueError("give mask (inpainting) or outpaint, not both")
        return self


def add_routes(app: FastAPI, served: Served, worker: Worker) -> None:
    @app.get("/edgesd/v1/models")
    def models():
        return [{"name": name, "family": pipe.family.name, "native_size": pipe.folder.native_size,
                 "inpainting_unet": pipe.unet.in_channels != pipe.latent_channels, "current": name == served.current,
                 "defaults": {**pipe.folder.defaults, "scheduler": pipe.folder.scheduler_config["_class_name"]}}
                for name, pipe in served.models.items()]

    @app.post("/edgesd/v1/generate")
    async def generate(body: GenerateRequest, request: Request):
        name = served.find(body.model) if body.model is not None else served.current
        image = a1111.decode(body.image, "image", served.max_pixels)
        native = served.models[name].folder.native_size
        size = (body.width, body.height) if (body.width, body.height) != (None, None) else within_area(image.size, native**2)
        all_seeds = seeds(body.seed, body.num_images)
        settings = dict(prompt=body.prompt, negative_prompt=body.negative_prompt, strength=body.strength,
                        num_inference_steps=body.num_inference_steps, guidance_scale=body.guidance_scale,
                        scheduler=body.scheduler, size=size)
        if body.outpaint is not None:
            pipe = served.inpainter(name)
            call = lambda seed, callback: pipe.outpaint(image, **body.outpaint.model_dump(), **settings,  # noqa: E731
                                                        seed=seed, callback=callback)
        elif body.mask is not None:
            pipe, mask = served.inpainter(name), a1111.decode(body.mask, "mask", served.max_pixels)
            if mask.size != image.size:
                raise HttpError(422, f"the mask is {mask.size[0]}x{mask.size[1]}, the image {image.size[0]}x{image.size[1]}: "
                                     "they must be the same size")
            call = lambda seed, callback: pipe(image, mask, **settings, seed=seed,  # noqa: E731
                                               padding_mask_crop=body.padding_mask_crop, masked_content=body.masked_content,
                                               callback=callback)
        else:
            pipe = served.models[name]
            call = lambda seed, callback: pipe(image, **settings, seed=seed, callback=callback)  # noqa: E731
        made, interrupted = await run_job(worker, per_seed(call, all_seeds), len(all_seeds), name, request, body.task_id)
        return {"model": name, "interrupted": interrupted,
                "images": [{"image": base64.b64encode(png_bytes(im, params)).decode(), "seed": params["seed"],
                            "width": im.width, "height": im.height, "parameters": params} for im, params in made]}

    @app.get("/edgesd/v1/progress/{task_id}")
    def progress(task_id: str, preview_image: bool = False):
        """A job's state: queued (with how many jobs run before it), running (its progress), or unknown
        (finished, cancelled, or never seen)."""
        job = worker.find(task_id)
        if job is None:
            return {"state": "unknown", "progress": 0.0}
        if job is not worker.current:
            return {"state": "queued", "progress": 0.0, "ahead": worker.ahead(job)}
        return {"state": "running", "progress": job.progress, "image": job.part, "images": job.parts, "step": job.step,
                "steps": job.steps, "preview": preview(job, served) if preview_image else None}


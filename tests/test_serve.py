"""`edgesd serve` against the unmodified webuiapi client, raw HTTP and the page in headless Chromium, on
127.0.0.1 only: the same pixels as the API for the same settings, batches reproducible image by image
(A1111's seed + i), samplers, inpainting, outpainting, interrupt, bad input, auth, the queue's bound and
disconnects. The page's screenshots are kept in test-artifacts/page (EDGESD_TEST_ARTIFACTS)."""

import base64
import io
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
webuiapi = pytest.importorskip("webuiapi")
requests = pytest.importorskip("requests")

from edgesd import Img2ImgPipeline, InpaintPipeline  # noqa: E402
from edgesd.outputs import PARAMETERS_KEY  # noqa: E402
from edgesd.serve.app import create_app  # noqa: E402
from edgesd.serve.served import Served  # noqa: E402

SIZE = (96, 64)


def picture() -> Image.Image:
    y, x = np.mgrid[0:50, 0:70]
    return Image.fromarray(np.stack([x * 3, y * 4, (x + y) * 2], -1).astype(np.uint8))


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class Running:
    """A server on 127.0.0.1 in a thread, stopped (and its worker closed) on exit."""

    def __init__(self, served: Served):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = create_app(served)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}/sdapi/v1"

    def __enter__(self):
        self.thread.start()
        for _ in range(200):  # bounded: 10 s
            if self.server.started:
                return self
            time.sleep(0.05)
        raise RuntimeError("the server did not start")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def pipes(exported):
    return {name: Img2ImgPipeline.load(exported[name], backend="onnxruntime", device="cpu", inference_precision="fp32")
            for name in ("tiny-sd1", "tiny-sd2")}


@pytest.fixture(scope="module")
def server(pipes):
    with Running(Served(dict(pipes), queue_size=2)) as running:
        yield running


def test_webuiapi_img2img_gives_the_apis_pixels_and_each_batch_image_alone(server, pipes):
    api = webuiapi.WebUIApi(port=server.port)
    result = api.img2img(images=[picture()], prompt="a red house", negative_prompt="blurry", seed=11, steps=4,
                         denoising_strength=0.6, cfg_scale=6.0, width=SIZE[0], height=SIZE[1], batch_size=2,
                         sampler_name="Euler")
    assert result.info["all_seeds"] == [11, 12] and result.info["sd_model_name"] == "tiny-sd1"
    resized = picture().resize(SIZE, Image.Resampling.LANCZOS)
    for seed, got in zip((11, 12), result.images):
        want = pipes["tiny-sd1"](resized, "a red house", negative_prompt="blurry", strength=0.6, num_inference_steps=4,
                                 guidance_scale=6.0, seed=seed, scheduler="Euler").images[0]
        assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(want))
    stored = result.images[0].text
    assert json.loads(stored[PARAMETERS_KEY])["seed"] == 11 and "Seed: 11" in stored["parameters"]
    assert "Sampler: Euler," in result.info["infotexts"][0] and result.parameters["init_images"] is None
    assert "/" not in json.dumps(json.loads(stored[PARAMETERS_KEY]))  # no local path in what is shared


def test_samplers_schedule_types_models_and_switching(server, pipes):
    api = webuiapi.WebUIApi(port=server.port, sampler="DPM++ 2M", scheduler="karras")
    assert {"Euler a", "DPM++ 2M Karras", "UniPC"} <= {s["name"] for s in api.get_samplers()}
    result = api.img2img(images=[picture()], prompt="x", seed=3, steps=4, width=SIZE[0], height=SIZE[1])
    assert result.info["sampler_name"] == "DPM++ 2M Karras"
    want = pipes["tiny-sd1"](picture().resize(SIZE, Image.Resampling.LANCZOS), "x", strength=0.75, num_inference_steps=4,
                             guidance_scale=7.0, seed=3, scheduler="DPM++ 2M Karras").images[0]
    assert np.array_equal(np.asarray(result.image.convert("RGB")), np.asarray(want))
    assert api.util_get_model_names() == sorted(f"{n} [{p.provenance['manifest_sha256'][:10]}]" for n, p in pipes.items())
    titles = api.util_get_model_names()
    api.util_set_model(titles[1], find_closest=False)  # webuiapi sets a model by its title
    try:
        assert api.util_get_current_model().startswith("tiny-sd2 [")
        assert api.img2img(images=[picture()], prompt="x", seed=3, steps=2, width=SIZE[0], height=SIZE[1]).info[
            "sd_model_name"] == "tiny-sd2"
    finally:
        api.util_set_model(titles[0], find_closest=False)
    wrong = requests.post(f"{server.url}/options", json={"sd_model_checkpoint": "sd-xl"}, timeout=30)
    assert wrong.status_code == 422 and "no served model 'sd-xl'" in wrong.json()["detail"]


def test_inpainting_through_mask_image(server, pipes):
    """The mask's white repainted, the rest the input's own pixels (A1111's overlay); the repainted part
    is the inpainting pipeline's on the same model."""
    mask = Image.new("L", SIZE, 0)
    mask.paste(255, (24, 16, 72, 48))
    api = webuiapi.WebUIApi(port=server.port)
    result = api.img2img(images=[picture()], mask_image=mask, mask_blur=0, inpaint_full_res=False, inpainting_fill=1,
                         prompt="a cat", seed=4, steps=4, denoising_strength=1.0, width=SIZE[0], height=SIZE[1], sampler_name="Euler")
    got = np.asarray(result.image.convert("RGB"))
    resized = picture().resize(SIZE, Image.Resampling.LANCZOS)
    want = InpaintPipeline.from_pipe(pipes["tiny-sd1"])(resized, mask, "a cat", strength=1.0, num_inference_steps=4,
                                                        guidance_scale=7.0, seed=4, scheduler="Euler", size=SIZE).images[0]
    inside = np.asarray(mask) > 127
    assert np.array_equal(got[~inside], np.asarray(resized)[~inside]) and np.array_equal(got[inside], np.asarray(want)[inside])


@pytest.mark.parametrize("fill,content", [(0, "fill"), (2, "latent noise"), (3, "latent nothing")])
def test_inpainting_fill_starts_the_masked_area_as_a1111s_masked_content(server, pipes, fill, content):
    mask = Image.new("L", SIZE, 0)
    mask.paste(255, (24, 16, 72, 48))
    answer = requests.post(f"{server.url}/img2img", timeout=60, json={
        "init_images": [b64(picture())], "mask": b64(mask), "mask_blur": 0, "inpaint_full_res": False, "inpainting_fill": fill,
        "prompt": "a cat", "seed": 4, "steps": 4, "denoising_strength": 0.6, "width": SIZE[0], "height": SIZE[1]}).json()
    png = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    assert json.loads(png.text[PARAMETERS_KEY])["masked_content"] == content
    want = InpaintPipeline.from_pipe(pipes["tiny-sd1"])(
        picture().resize(SIZE, Image.Resampling.LANCZOS), mask, "a cat", strength=0.6, num_inference_steps=4, guidance_scale=7.0,
        seed=4, size=SIZE, masked_content=content).images[0]
    inside = np.asarray(mask) > 127
    assert np.array_equal(np.asarray(png.convert("RGB"))[inside], np.asarray(want)[inside])


def test_bad_input_is_a_4xx_saying_what_is_wrong(server):
    body = {"init_images": [b64(picture())], "prompt": "x", "steps": 2, "width": SIZE[0], "height": SIZE[1]}
    cases = [({**body, "init_images": ["not base64!"]}, "init_images[0] is not base64"),
             ({**body, "init_images": [base64.b64encode(b"plain text").decode()]}, "cannot read init_images[0]"),
             ({**body, "denoising_strength": 1.5}, "denoising_strength"),
             ({**body, "steps": "many"}, "steps"),
             ({**body, "sampler_name": "DPM++ 3M"}, "unknown sampler 'DPM++ 3M'; samplers: Euler a"),
             ({**body, "scheduler": "exponential", "sampler_name": "Euler"}, "edgesd runs Automatic or Karras"),
             ({**body, "script_name": "x/y/z plot"}, "scripts are not supported"),
             ({**body, "mask": b64(Image.new("L", (8, 8)))[:-4] + "@@@@"}, "mask is not base64"),
             ({**body, "init_images": ["data:image/png;base64," + b64(Image.new("RGB", (4200, 4200)))]}, "over the limit")]
    for payload, message in cases:
        answer = requests.post(f"{server.url}/img2img", json=payload, timeout=60)
        assert answer.status_code == 422 and message in answer.json()["detail"], (message, answer.text)
    assert requests.post(f"{server.url}/img2img", data=b"{", headers={"content-type": "application/json"},
                         timeout=30).status_code == 422
    ok = requests.post(f"{server.url}/img2img", json={**body, "init_images": ["data:image/png;base64," + b64(picture())],
                                                      "unknown_field": 1}, timeout=60)
    assert ok.status_code == 200 and json.loads(ok.json()["info"])["edgesd"]["ignored"] == ["unknown_field"]


def test_an_interrupt_returns_what_the_job_has(server):
    api = webuiapi.WebUIApi(port=server.port)
    answer = {}
    thread = threading.Thread(target=lambda: answer.update(result=api.img2img(
        images=[picture()], prompt="x", seed=1, steps=400, denoising_strength=1.0, width=SIZE[0], height=SIZE[1],
        batch_size=3, sampler_name="Euler")))
    thread.start()
    for _ in range(400):  # bounded: 20 s
        progress = api.get_progress()
        if progress["state"]["sampling_step"] > 2:
            break
        time.sleep(0.05)
    assert 0 < progress["progress"] < 1 and progress["current_image"] is not None
    api.interrupt()
    thread.join(timeout=60)
    result = answer["result"]
    assert len(result.images) == 1 and result.info["edgesd"]["interrupted"] and result.info["all_seeds"] == [1]


def test_the_queue_is_bounded_and_a_client_that_leaves_cancels_its_job(pipes):
    body = {"init_images": [b64(picture())], "prompt": "x", "steps": 400, "denoising_strength": 1.0, "width": SIZE[0],
            "height": SIZE[1], "sampler_name": "Euler"}
    with Running(Served({"tiny-sd1": pipes["tiny-sd1"]}, queue_size=1)) as running:
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(requests.post(f"{running.url}/img2img", json=body, timeout=60)))
                   for _ in range(2)]
        for thread in threads:  # one runs, one waits
            thread.start()
            time.sleep(0.5)
        full = requests.post(f"{running.url}/img2img", json=body, timeout=60)
        assert full.status_code == 429 and int(full.headers["Retry-After"]) >= 1
        requests.post(f"{running.url}/interrupt", timeout=30)  # the first returns
        for _ in range(100):
            if requests.get(f"{running.url}/progress", timeout=30).json()["state"]["sampling_step"] > 0:
                break
            time.sleep(0.05)
        requests.post(f"{running.url}/interrupt", timeout=30)  # the second
        for thread in threads:
            thread.join(timeout=60)
        assert [a.status_code for a in answers] == [200, 200]
        with pytest.raises(requests.exceptions.ReadTimeout):  # this client leaves after 1 s
            requests.post(f"{running.url}/img2img", json=body, timeout=1)
        for _ in range(100):  # bounded: 5 s; the job is cancelled, the worker free again
            if running.app.state.worker.current is None:
                break
            time.sleep(0.05)
        assert running.app.state.worker.current is None
        assert requests.post(f"{running.url}/img2img", json={**body, "steps": 2}, timeout=60).status_code == 200


def test_an_api_key_is_asked_of_every_request_and_bodies_are_bounded(pipes):
    served = Served({"tiny-sd1": pipes["tiny-sd1"]}, api_key="s3cret", max_body=2**20)
    with Running(served) as running:
        assert requests.get(f"{running.url}/sd-models", timeout=30).status_code == 401
        assert requests.get(f"{running.url}/sd-models", headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
        assert requests.get(f"{running.url}/sd-models", headers={"Authorization": "Bearer s3cret"}, timeout=30).status_code == 200
        api = webuiapi.WebUIApi(port=running.port, username="me", password="s3cret")
        assert api.img2img(images=[picture()], prompt="x", steps=2, width=SIZE[0], height=SIZE[1]).images
        big = requests.post(f"{running.url}/img2img", data=b"x" * (2**20 + 1), timeout=30,
                            headers={"Authorization": "Bearer s3cret", "content-type": "application/json"})
        assert big.status_code == 413


def test_serve_without_its_extra_says_what_to_install(monkeypatch):
    import importlib.util

    from edgesd.errors import EdgesdError
    from edgesd.serve import require_serve_extra

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    with pytest.raises(EdgesdError, match=r"pip install 'edgesd\[serve\]'"):
        require_serve_extra()


def generate(server, **body):
    return requests.post(f"http://127.0.0.1:{server.port}/edgesd/v1/generate", json={"image": b64(picture()), **body},
                         timeout=60)


def pixels(encoded: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB"))


def test_edgesds_own_endpoint_gives_the_python_apis_pixels_for_each_task(server, pipes):
    """img2img (variations: seed + i), inpainting and outpainting under the Python API's names, each PNG
    carrying what replays it; the model's defaults where a setting is left out."""
    pipe = pipes["tiny-sd2"]
    answer = generate(server, prompt="a boat", seed=21, num_images=2, num_inference_steps=3, strength=0.7,
                      guidance_scale=5.0, scheduler="DPM++ 2M Karras", model="tiny-sd2").json()
    assert answer["model"] == "tiny-sd2" and [im["seed"] for im in answer["images"]] == [21, 22]
    for made in answer["images"]:
        want = pipe(picture(), "a boat", seed=made["seed"], num_inference_steps=3, strength=0.7, guidance_scale=5.0,
                    scheduler="DPM++ 2M Karras").images[0]
        assert np.array_equal(pixels(made["image"]), np.asarray(want))
        stored = json.loads(Image.open(io.BytesIO(base64.b64decode(made["image"]))).text[PARAMETERS_KEY])
        assert stored["seed"] == made["seed"] and stored["scheduler"] == "DPM++ 2M Karras" and stored["model"] == "tiny-sd2"
    defaults = generate(server, seed=2, model="tiny-sd2").json()["images"][0]["parameters"]
    assert (defaults["num_inference_steps"], defaults["strength"]) == (2, 0.5)  # tiny-sd2's recommended values

    mask = Image.new("L", picture().size, 0)
    mask.paste(255, (10, 10, 40, 30))
    inpainter = InpaintPipeline.from_pipe(pipes["tiny-sd1"])
    inpainted = generate(server, mask=b64(mask), prompt="a cat", seed=4, num_inference_steps=4).json()["images"][0]
    want = inpainter(picture(), mask, "a cat", seed=4, num_inference_steps=4).images[0]
    assert np.array_equal(pixels(inpainted["image"]), np.asarray(want))
    outpainted = generate(server, outpaint={"left": 16, "bottom": 8}, prompt="a cat", seed=5, num_inference_steps=4).json()
    want = inpainter.outpaint(picture(), "a cat", left=16, bottom=8, seed=5, num_inference_steps=4).images[0]
    assert np.array_equal(pixels(outpainted["images"][0]["image"]), np.asarray(want))
    assert outpainted["images"][0]["parameters"]["extension"]["left"] == 16


def test_the_own_endpoint_resizes_large_inputs_to_the_native_area_and_refuses_bad_input(server, pipes):
    large = Image.new("RGB", (400, 200), "teal")  # tiny-sd1's native area is 64 x 64
    made = requests.post(f"http://127.0.0.1:{server.port}/edgesd/v1/generate", timeout=60,
                         json={"image": b64(large), "seed": 1, "num_inference_steps": 2}).json()["images"][0]
    assert (made["width"], made["height"]) == (90, 44)  # 4096 px, 2:1 kept, floored to the UNet's multiple
    asked = generate(server, seed=1, num_inference_steps=2, width=SIZE[0]).json()["images"][0]
    assert asked["width"] == SIZE[0]
    cases = [({"mask": b64(Image.new("L", (8, 8)))}, 422, "the mask is 8x8, the image 70x50"),
             ({"mask": b64(Image.new("L", (70, 50))), "outpaint": {"left": 8}}, 422, "not both"),
             ({"model": "sd-xl"}, 422, "no served model 'sd-xl'"),
             ({"strength": float("nan")}, 422, "strength"),
             ({"outpaint": {"left": -8}}, 422, "outpaint.left"),
             ({"scheduler": "DPM++ 3M"}, 422, "DPM++ 3M"),
             ({"denoising_strength": 0.5}, 422, "denoising_strength: Extra inputs are not permitted"),
             ({"task_id": "../etc"}, 422, "task_id"),
             ({"seed": 2**64 - 1, "num_images": 2}, 422, "goes past the largest seed"),
             ({"image": "data:image/png;base64,AAAA"}, 422, "cannot read image")]
    for extra, status, message in cases:
        body = json.dumps({"image": b64(picture()), "num_inference_steps": 2, **extra}, allow_nan=True)
        answer = requests.post(f"http://127.0.0.1:{server.port}/edgesd/v1/generate", data=body, timeout=60,
                               headers={"content-type": "application/json"})
        assert answer.status_code == status and message in answer.json()["detail"], (extra, answer.text)


def test_a_client_follows_its_own_job_by_its_task_id(server):
    url = f"http://127.0.0.1:{server.port}/edgesd/v1"
    answers = []
    slow = {"prompt": "x", "num_inference_steps": 400, "strength": 1.0, "scheduler": "Euler"}
    thread = threading.Thread(target=lambda: answers.append(generate(server, **slow, task_id="mine")))
    thread.start()
    for _ in range(400):  # bounded: 20 s
        seen = requests.get(f"{url}/progress/mine", params={"preview_image": True}, timeout=30).json()
        if seen["state"] == "running" and seen["step"] > 1:
            break
        time.sleep(0.05)
    assert seen["images"] == 1 and 0 < seen["progress"] < 1 and seen["preview"] is not None
    assert generate(server, **slow, task_id="mine").status_code == 409  # a live job's name is not taken twice
    assert requests.get(f"{url}/progress/someone-else", timeout=30).json()["state"] == "unknown"
    requests.post(f"{server.url}/interrupt", timeout=30)
    thread.join(timeout=60)
    assert answers[0].json()["interrupted"] and requests.get(f"{url}/progress/mine", timeout=30).json()["state"] == "unknown"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("EDGESD_TEST_ARTIFACTS", "test-artifacts")) / "page"


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by playwright (no browser download is possible here)."""
    playwright = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("no chromium (apt-get install chromium)")
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def png_file(tmp_path: Path) -> Path:
    path = tmp_path / "input.png"
    picture().resize((120, 80)).save(path)
    return path


def src_pixels(image) -> tuple[np.ndarray, dict]:
    """A result <img>'s pixels and the parameters in its PNG."""
    png = Image.open(io.BytesIO(base64.b64decode(image.get_attribute("src").partition(",")[2])))
    return np.asarray(png.convert("RGB")), json.loads(png.text[PARAMETERS_KEY])


@pytest.mark.parametrize("viewport", [(1280, 800), (390, 844)], ids=["desktop", "phone"])
def test_the_page_generates_variations_paints_a_mask_and_chains(browser, server, pipes, tmp_path, viewport):
    """Driven as a person would, by the controls' accessible names: the results are the API's pixels."""
    page = browser.new_page(viewport=dict(zip(("width", "height"), viewport)))
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"http://127.0.0.1:{server.port}/")
    page.get_by_label("Model").select_option("tiny-sd1")
    page.get_by_label("Image", exact=True).set_input_files(png_file(tmp_path))
    page.get_by_label("Prompt", exact=True).fill("a lighthouse")
    page.get_by_label("Negative prompt").fill("fog")
    page.get_by_label("Strength").evaluate("(slider) => { slider.value = 0.5; slider.dispatchEvent(new Event('input')) }")
    page.get_by_label("Steps").fill("4")
    page.get_by_label("Guidance").fill("6")
    page.get_by_label("Seed").fill("7")
    page.get_by_label("Variations").fill("2")
    page.get_by_role("button", name="Generate").click()
    results = page.get_by_role("region", name="Results").get_by_role("img")
    results.nth(1).wait_for(timeout=60_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport[0]  # no sideways scrolling
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"variations-{viewport[0]}x{viewport[1]}.png", full_page=True)
    for k in range(2):
        got, stored = src_pixels(results.nth(k))
        assert stored["seed"] == 7 + k and stored["strength"] == 0.5 and stored["negative_prompt"] == "fog"
        want = pipes["tiny-sd1"](png_file(tmp_path), "a lighthouse", negative_prompt="fog", strength=0.5,
                                 num_inference_steps=4, guidance_scale=6.0, seed=7 + k, size=tuple(stored["size"])).images[0]
        assert np.array_equal(got, np.asarray(want))

    page.get_by_role("button", name="Use seed 8 as input").click()  # chaining: the result is the next input
    page.wait_for_function("document.getElementById('source').src.length > 1000 && "
                           "document.getElementById('source').src === document.querySelectorAll('#results img')[1].src")
    page.get_by_label("Paint mask").check()
    box = page.get_by_label("Inpainting mask: paint where the image should change").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    page.get_by_label("Variations").fill("1")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("document.querySelectorAll('#results img').length === 1")
    got, stored = src_pixels(results.nth(0))
    assert stored["task"] == "inpaint" and "mask_sha256" in stored
    page.screenshot(path=ARTIFACTS / f"inpainted-{viewport[0]}x{viewport[1]}.png", full_page=True)
    assert errors == []


def test_the_page_takes_a_dropped_image_cancels_a_running_job_and_outpaints(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"http://127.0.0.1:{server.port}/")
    page.evaluate("""async (data) => {
        const file = new File([await (await fetch(data)).blob()], "dropped.png", {type: "image/png"});
        const transfer = new DataTransfer();
        transfer.items.add(file);
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true}));
    }""", "data:image/png;base64," + b64(picture()))
    page.wait_for_function("document.getElementById('status').textContent === 'Input: 70×50'")
    page.get_by_label("Steps").fill("150")
    page.get_by_label("Variations").fill("8")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("document.getElementById('status').textContent.includes('step')", timeout=30_000)
    page.get_by_role("img", name="Preview of the image being made").wait_for()
    page.screenshot(path=ARTIFACTS / "running.png")
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_function("document.getElementById('status').textContent === 'Cancelled.'")
    for _ in range(100):  # bounded: 5 s; the server cancelled the job when the page let go of it
        if server.app.state.worker.current is None:
            break
        time.sleep(0.05)
    assert server.app.state.worker.current is None
    page.get_by_label("Steps").fill("4")
    page.get_by_label("Variations").fill("1")
    page.get_by_label("Outpaint left").fill("16")
    page.get_by_role("button", name="Generate").click()
    page.get_by_role("region", name="Results").get_by_role("img").first.wait_for(timeout=60_000)
    _, stored = src_pixels(page.get_by_role("region", name="Results").get_by_role("img").first)
    assert stored["task"] == "outpaint" and stored["extension"]["left"] == 16

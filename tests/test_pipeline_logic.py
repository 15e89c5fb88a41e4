"""Pipeline logic on fake sessions (edgesd.sessions.fake): batching, guidance, encoding reuse,
cancelling, tiling and the generator's draw order, in milliseconds, with no export and no engine.
Numerical parity with diffusers is tests/test_pipeline_parity.py's and tests/test_inpaint_parity.py's."""

import numpy as np
import pytest

from edgesd import Img2ImgPipeline, InpaintPipeline
from edgesd.denoise import STOP
from edgesd.errors import InvalidInputError, ModelFolderError
from edgesd.generator import TorchGenerator
from edgesd.sessions.fake import FakeSession, fake_model_folder

IMAGE = np.full((48, 64, 3), 128, np.uint8)
MASK = np.zeros((48, 64), np.uint8)
MASK[8:40, 16:48] = 255


def fake(cls, tmp_path, **folder_options):
    sessions = {}
    pipe = cls(fake_model_folder(tmp_path, **folder_options), lambda name, lora: sessions.setdefault(name, FakeSession(name)),
               "onnxruntime")
    return pipe, sessions


def test_guidance_doubles_the_unet_batch_and_images_share_one_encoding(tmp_path):
    pipe, sessions = fake(Img2ImgPipeline, tmp_path)
    result = pipe(IMAGE, "a cat", negative_prompt="dog", strength=0.5, num_inference_steps=8, guidance_scale=7.5,
                  num_images=3, seed=1)
    assert len(result.images) == 3 and result.images[0].size == (64, 48)
    unet = sessions["unet"].calls
    assert len(unet) == 4 and unet[0]["sample"] == (6, 4, 6, 8) and unet[0]["encoder_hidden_states"] == (6, 77, 8)
    assert sessions["text_encoder"].calls == [{"input_ids": (2, 77)}] and len(sessions["vae_encoder"].calls) == 1
    pipe(IMAGE, "a cat", strength=0.5, num_inference_steps=8, guidance_scale=1.0, seed=1)
    assert sessions["unet"].calls[-1]["sample"] == (1, 4, 6, 8)  # no guidance: no doubling


def test_a_sweep_encodes_prompt_and_image_once(tmp_path):
    pipe, sessions = fake(Img2ImgPipeline, tmp_path)
    for strength in (0.3, 0.6, 0.9):
        pipe(IMAGE, "a cat", strength=strength, num_inference_steps=10, guidance_scale=0, seed=2)
    assert len(sessions["text_encoder"].calls) == 1 and len(sessions["vae_encoder"].calls) == 1
    pipe.reuse_encodings = False
    pipe(IMAGE, "a cat", strength=0.3, num_inference_steps=10, guidance_scale=0, seed=2)
    assert len(sessions["text_encoder"].calls) == 2 and len(sessions["vae_encoder"].calls) == 2


def test_callback_sees_every_step_and_cancels(tmp_path):
    pipe, _ = fake(Img2ImgPipeline, tmp_path)
    seen = []
    result = pipe(IMAGE, "x", strength=1.0, num_inference_steps=5, guidance_scale=0, seed=0,
                  callback=lambda step, total, latents: seen.append((step, total)))
    assert seen == [(i, 5) for i in range(1, 6)] and not result.cancelled
    result = pipe(IMAGE, "x", strength=1.0, num_inference_steps=5, guidance_scale=0, seed=0,
                  callback=lambda step, total, latents: step < 2)
    assert result.cancelled and result.images == [] and len(result.timings["steps"]) == 2


def test_a_callback_answering_stop_decodes_the_steps_so_far(tmp_path):
    """STOP (diffusers' and A1111's interrupt): the loop ends, the latents of the steps run are decoded."""
    pipe, sessions = fake(Img2ImgPipeline, tmp_path)
    kept = {}

    def stop_after_two(step, total, latents):
        kept[step] = latents.copy()
        return STOP if step == 2 else None

    call = dict(strength=1.0, num_inference_steps=5, guidance_scale=0, seed=0, callback=stop_after_two)
    result = pipe(IMAGE, "x", **call)
    assert result.interrupted and not result.cancelled and len(result.images) == 1 and len(result.timings["steps"]) == 2
    assert len(sessions["unet"].calls) == 2 and len(sessions["vae_decoder"].calls) == 1
    latent = pipe(IMAGE, "x", output_type="latent", **call)
    assert latent.interrupted and np.array_equal(latent.latents, kept[2])
    assert not pipe(IMAGE, "x", strength=1.0, num_inference_steps=5, guidance_scale=0, seed=0).interrupted


def test_from_pipe_inpaints_with_an_img2img_pipelines_submodels(tmp_path):
    pipe, sessions = fake(Img2ImgPipeline, tmp_path)
    opened = dict(sessions)
    inpaint = InpaintPipeline.from_pipe(pipe)
    result = inpaint(IMAGE, MASK, "x", num_inference_steps=2, guidance_scale=0, seed=3, size=(64, 48))
    assert sessions == opened and result.provenance["task"] == "inpaint" and pipe.provenance["task"] == "img2img"
    alone, _ = fake(InpaintPipeline, tmp_path / "alone")
    want = alone(IMAGE, MASK, "x", num_inference_steps=2, guidance_scale=0, seed=3, size=(64, 48))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(want.images[0]))


def test_low_memory_tiles_the_vae_above_its_native_size(tmp_path):
    pipe, sessions = fake(Img2ImgPipeline, tmp_path)
    pipe.vae.tiling = True  # what low_memory=True sets
    big = np.full((96, 160, 3), 100, np.uint8)  # the fake VAE's native size is 64 px
    assert pipe(big, "x", strength=0.5, num_inference_steps=4, guidance_scale=0, seed=0).images[0].size == (160, 96)
    assert len(sessions["vae_encoder"].calls) > 1 and all(c["sample"][2] <= 64 for c in sessions["vae_encoder"].calls)


class Recording(TorchGenerator):
    draws: list = []

    def randn(self, shape):
        Recording.draws.append(tuple(shape))
        return super().randn(shape)


ONE, BATCH = (1, 4, 6, 8), (2, 4, 6, 8)  # a VAE sample of the single input; the noise of 2 images


@pytest.mark.parametrize("channels,strength,expected", [
    (4, 1.0, [ONE, BATCH, ONE]),  # image latents (a 4-channel UNet needs them even at strength 1), noise, masked
    (9, 1.0, [BATCH, ONE]),  # noise, masked image latents
    (9, 0.5, [ONE, BATCH, ONE]),
])
def test_inpaint_draws_in_diffusers_order(tmp_path, monkeypatch, channels, strength, expected):
    from edgesd.pipelines import base

    monkeypatch.setattr(base, "TorchGenerator", Recording)
    Recording.draws = []
    pipe, sessions = fake(InpaintPipeline, tmp_path, unet_in_channels=channels)
    pipe(IMAGE, MASK, "x", strength=strength, num_inference_steps=4, guidance_scale=7.5, num_images=2, seed=0, size=(64, 48))
    steps = len(sessions["unet"].calls)
    assert Recording.draws == expected + [BATCH] * steps  # then one draw per ancestral step
    assert sessions["unet"].calls[0]["sample"] == (4, channels, 6, 8)  # 2 images x guidance; 9: + mask + masked latents
    assert len(sessions["vae_encoder"].calls) == expected.count(ONE)


def test_an_inpainting_model_is_refused_by_img2img_with_what_to_use(tmp_path):
    """From the folder alone (the CLI says it before loading: tests/test_inpaint_parity.py), and by a call."""
    from edgesd.errors import InvalidInputError

    pipe, sessions = fake(Img2ImgPipeline, tmp_path, unet_in_channels=9)
    with pytest.raises(InvalidInputError, match="inpainting model .* use InpaintPipeline"):
        Img2ImgPipeline.check_folder(pipe.folder)
    with pytest.raises(InvalidInputError, match="inpainting model .* use InpaintPipeline"):
        pipe(IMAGE, "x", strength=0.5, num_inference_steps=4, seed=0)
    assert "unet" not in sessions or not sessions["unet"].calls
    InpaintPipeline.check_folder(pipe.folder)


def test_a_family_is_data_its_named_inputs_reach_the_unet_batched(tmp_path, monkeypatch):
    """A family added from data alone: its conditioning names one more UNet input (as SDXL's
    text_embeds), which the guidance wrapper doubles with the others and the UNet wrapper feeds by
    name, with no change to the loop, the task or the wrappers."""
    from edgesd import families
    from edgesd.model_folder import ModelFolder

    class Pooled(families.Family):
        def conditioning(self, encoded, settings, size, guided):
            pooled = np.repeat(encoded["text_encoder"]["last_hidden_state"][:, 0], settings["num_images"], axis=0)
            return {**super().conditioning(encoded, settings, size, guided), "text_embeds": pooled}  # (batch, width)

    monkeypatch.setitem(families.FAMILIES, "pooled", Pooled("pooled"))
    folder = fake_model_folder(tmp_path)
    folder = ModelFolder(folder.path, {**folder.manifest, "family": "pooled"})
    sessions = {}
    pipe = Img2ImgPipeline(folder, lambda name, lora: sessions.setdefault(name, FakeSession(name)), "onnxruntime")
    pipe(IMAGE, "a cat", strength=0.5, num_inference_steps=4, guidance_scale=7.5, num_images=3, seed=1)
    call = sessions["unet"].calls[0]
    assert call["text_embeds"] == (6, 8) and call["encoder_hidden_states"] == (6, 77, 8) and call["sample"][0] == 6
    monkeypatch.delitem(families.FAMILIES, "pooled")
    with pytest.raises(ModelFolderError, match="'pooled'-family model"):
        Img2ImgPipeline(folder, lambda name, lora: FakeSession(name), "onnxruntime")


def starting_latents(pipe, masked_content: str, seed: int = 0):
    """The latents an inpainting call starts denoising from, and its scheduler plan (nothing is denoised)."""
    seen = {}
    pipe.generate = lambda start, settings, plan, size, provenance, prepare, *rest, **kw: seen.update(prepare=prepare, plan=plan)
    picture = np.stack([*np.meshgrid(np.arange(64) * 4, np.arange(48) * 5), np.full((48, 64), 200)], -1).astype(np.uint8)
    pipe(picture, MASK, "x", strength=0.5, num_inference_steps=4, guidance_scale=0, seed=seed, size=(64, 48),
         masked_content=masked_content)
    return seen["prepare"](TorchGenerator(seed)).latents, seen["plan"]


def test_masked_content_latent_nothing_and_latent_noise_replace_the_masked_latents_only(tmp_path):
    """A1111's inpainting_fill 3 and 2: the masked area's latents zeros or fresh noise before the image is
    noised to the strength; the kept area's as the input's ("original", diffusers' way)."""
    pipe, _ = fake(InpaintPipeline, tmp_path)
    masked = np.broadcast_to(MASK[None, None, ::8, ::8] > 127, (1, 4, 6, 8))
    original, plan = starting_latents(pipe, "original")
    generator = TorchGenerator(0)
    generator.randn(ONE)  # the input's VAE sample
    nothing, _ = starting_latents(pipe, "latent nothing")
    want = plan.add_noise(np.zeros((1, 4, 6, 8), np.float32), generator.randn((1, 4, 6, 8)))
    assert np.allclose(nothing[masked], want[masked], atol=1e-6) and np.array_equal(nothing[~masked], original[~masked])
    assert not np.allclose(nothing[masked], original[masked], atol=1e-3)
    generator = TorchGenerator(0)
    generator.randn(ONE)
    fill = generator.randn((1, 4, 6, 8))
    noise, _ = starting_latents(pipe, "latent noise")
    assert np.allclose(noise[masked], plan.add_noise(fill, generator.randn((1, 4, 6, 8)))[masked], atol=1e-6)
    with pytest.raises(InvalidInputError, match="masked_content 'noise': one of original, fill"):
        starting_latents(pipe, "noise")


def test_fill_paints_the_masked_area_from_its_surroundings_and_keeps_the_rest():
    from PIL import Image

    from edgesd.pipelines.inpaint import filled, mask_array

    y, x = np.mgrid[0:48, 0:64]
    gradient = Image.fromarray(np.stack([x * 4, y * 5, np.full_like(x, 90)], -1).astype(np.uint8))
    got = np.asarray(filled(gradient, mask_array(Image.fromarray(MASK), (64, 48)))).astype(int)
    hole = MASK > 127
    assert np.array_equal(got[~hole], np.asarray(gradient)[~hole])
    assert 16 * 4 < got[24, 32, 0] < 48 * 4 and abs(got[24, 32, 2] - 90) <= 1  # between the hole's edges; flat stays flat
    everything = mask_array(Image.new("L", (64, 48), 255), (64, 48))
    assert np.array_equal(np.asarray(filled(gradient, everything)), np.asarray(gradient))  # nothing known: nothing to fill from


def test_diffusers_names_num_images_per_prompt_and_generator_are_edgesds(tmp_path):
    pipe, _ = fake(Img2ImgPipeline, tmp_path)
    call = dict(strength=0.5, num_inference_steps=2, guidance_scale=0)
    want = pipe(IMAGE, "x", num_images=2, seed=5, **call)
    for generator in (5, TorchGenerator(5)):
        got = pipe(IMAGE, "x", num_images_per_prompt=2, generator=generator, **call)
        assert got.seed == 5 and [np.asarray(a).tolist() for a in got.images] == [np.asarray(a).tolist() for a in want.images]
    with pytest.raises(InvalidInputError, match="seed or generator, not both"):
        pipe(IMAGE, "x", seed=1, generator=2, **call)
    with pytest.raises(InvalidInputError, match="num_images or num_images_per_prompt"):
        pipe(IMAGE, "x", num_images=3, num_images_per_prompt=2, **call)
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_images_per_promt'"):
        pipe(IMAGE, "x", num_images_per_promt=2, **call)

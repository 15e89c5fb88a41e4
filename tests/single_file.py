"""Single-file checkpoints (the original Stable Diffusion / SDXL layout model sites share) written from
the tests' random diffusers models, so `edgesd export model.safetensors` is tested without a hub.

The inverse of diffusers' single-file conversion, for any number of levels and layers per block
(diffusers' scripts/convert_diffusers_to_original_*.py hard-code the released models' 4 or 3 levels):
UNet blocks to input_blocks/middle_block/output_blocks, the VAE to encoder.down/decoder.up (numbered
in reverse), CLIP text encoders as OpenAI's (`transformer.text_model...`) or OpenCLIP's
(`model.transformer.resblocks...`, q/k/v as one in_proj) under the prefixes each family uses.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2", "conv_in": "input_blocks.0.0",
             "conv_norm_out": "out.0", "conv_out": "out.2", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2"}


def unet_to_ldm(weights: dict, config: dict) -> dict:
    per = config["layers_per_block"]
    attention_up = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    renamed = {}
    for key, value in weights.items():
        module, _, leaf = key.rpartition(".")
        parts = module.split(".")
        kind, rest = "", []
        if module in _UNET_TOP:
            new = _UNET_TOP[module]
        elif parts[0] == "down_blocks":
            i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
            if kind == "downsamplers":
                new = f"input_blocks.{(i + 1) * (per + 1)}.0.op"
                rest = []
            else:
                new = f"input_blocks.{1 + i * (per + 1) + j}.{0 if kind == 'resnets' else 1}"
        elif parts[0] == "up_blocks":
            i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
            if kind == "upsamplers":
                new = f"output_blocks.{i * (per + 1) + per}.{2 if attention_up[i] else 1}"
            else:
                new = f"output_blocks.{i * (per + 1) + j}.{0 if kind == 'resnets' else 1}"
        elif parts[0] == "mid_block":
            kind, j, rest = parts[1], int(parts[2]), parts[3:]
            new = f"middle_block.{2 * j if kind == 'resnets' else 1}"
        else:
            raise KeyError(f"no original name for {key}")
        inner = ".".join(rest)
        if kind == "resnets":
            inner = dict(_RESNET).get(inner, inner)
        renamed["model.diffusion_model." + ".".join(filter(None, [new, inner, leaf]))] = value
    return renamed


def vae_to_ldm(weights: dict, config: dict) -> dict:
    levels = len(config["block_out_channels"])
    renamed = {}
    for key, value in weights.items():
        new = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        parts = new.split(".")
        if parts[1] == "down_blocks":  # encoder.down_blocks.i.resnets.j / downsamplers.0
            i = parts[2]
            new = ".".join([parts[0], "down", i, *(["block", parts[4]] if parts[3] == "resnets" else ["downsample"]), *parts[5:]])
        elif parts[1] == "up_blocks":  # decoder.up_blocks.i -> decoder.up.(levels - 1 - i)
            i = str(levels - 1 - int(parts[2]))
            new = ".".join([parts[0], "up", i, *(["block", parts[4]] if parts[3] == "resnets" else ["upsample"]), *parts[5:]])
        elif parts[1] == "mid_block":
            if parts[2] == "resnets":
                new = ".".join([parts[0], "mid", f"block_{int(parts[3]) + 1}", *parts[4:]])
            else:  # attentions.0: group_norm, to_q/k/v, to_out.0 as 1x1 convolutions
                inner = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}[parts[4]]
                leaf = parts[-1]
                new = ".".join([parts[0], "mid", "attn_1", inner, leaf])
                if inner != "norm" and leaf == "weight":
                    value = value.reshape(*value.shape, 1, 1)
        renamed["first_stage_model." + new] = value
    return renamed


def openclip_text_to_ldm(weights: dict, prefix: str) -> dict:
    """A CLIPTextModel(WithProjection)'s weights in OpenCLIP's names (q/k/v joined into in_proj)."""
    renamed, qkv = {}, {}
    names = [("text_model.encoder.layers.", "transformer.resblocks."), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
             (".mlp.fc1.", ".mlp.c_fc."), (".mlp.fc2.", ".mlp.c_proj."), (".self_attn.out_proj.", ".attn.out_proj."),
             ("text_model.final_layer_norm.", "ln_final."),
             ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
             ("text_model.embeddings.position_embedding.weight", "positional_embedding")]
    for key, value in weights.items():
        if key.endswith("position_ids"):
            continue
        if key == "text_projection.weight":
            renamed[prefix + "text_projection"] = value.T.contiguous()
            continue
        for proj in ("q_proj", "k_proj", "v_proj"):
            if f".self_attn.{proj}." in key:
                layer, leaf = key.split(f".self_attn.{proj}.")
                qkv.setdefault((layer, leaf), {})[proj] = value
                break
        else:
            for old, new in names:
                key = key.replace(old, new)
            renamed[prefix + key] = value
    for (layer, leaf), parts in qkv.items():
        layer = layer.replace("text_model.encoder.layers.", "transformer.resblocks.")
        renamed[f"{prefix}{layer}.attn.in_proj_{leaf}"] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])
    return renamed


def write_single_file(folder: Path, file: Path) -> Path:
    """The diffusers folder `folder` (SD 1.x, 2.x or SDXL) as one .safetensors checkpoint."""
    def weights(name: str, file_name: str) -> dict:
        return load_file(folder / name / file_name)

    def config(name: str) -> dict:
        return json.loads((folder / name / "config.json").read_text())

    state = {**unet_to_ldm(weights("unet", "diffusion_pytorch_model.safetensors"), config("unet")),
             **vae_to_ldm(weights("vae", "diffusion_pytorch_model.safetensors"), config("vae"))}
    if (folder / "text_encoder_2").is_dir():  # SDXL: OpenAI CLIP, then OpenCLIP bigG
        if (folder / "text_encoder").is_dir():
            state.update({f"conditioner.embedders.0.transformer.{k}": v for k, v in weights("text_encoder", "model.safetensors").items()})
        index = 1 if (folder / "text_encoder").is_dir() else 0
        state.update(openclip_text_to_ldm(weights("text_encoder_2", "model.safetensors"), f"conditioner.embedders.{index}.model."))
    elif config("text_encoder")["hidden_act"] == "gelu":  # SD 2.x: OpenCLIP ViT-H
        state.update(openclip_text_to_ldm(weights("text_encoder", "model.safetensors"), "cond_stage_model.model."))
    else:  # SD 1.x: OpenAI CLIP ViT-L
        state.update({f"cond_stage_model.transformer.{k}": v for k, v in weights("text_encoder", "model.safetensors").items()})
    save_file({k: v.contiguous() for k, v in state.items()}, file)
    return file

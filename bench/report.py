"""Render benchmark JSON results into bench/REPORT.md and one chart (per-stage latency per system).

    python bench/report.py bench/results/*.json [-o bench/REPORT.md] [--chart bench/report.png]

Reads what bench/compare.py writes (and, in a table of their own, `edgesd bench -o` files).
The chart needs matplotlib (`pip install 'edgesd[bench]'`); without it the report is written all
the same and says the chart is missing.
"""

import argparse
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

STAGES = ("text", "encode", "unet", "controlnet", "decode", "other")
STAGE_LABELS = {"text": "text encoder", "encode": "VAE encode", "unet": "UNet (all calls)", "controlnet": "ControlNet (all calls)",
                "decode": "VAE decode", "other": "other (scheduler, pre/post, overhead)"}
COMPARE_SCHEMA = "edgesd-bench-compare/1"
PRECISION_SCHEMA = "edgesd-bench-precision/1"
LORA_SCHEMA = "edgesd-bench-lora/1"
ORT_ATTENTION_SCHEMA = "edgesd-bench-ort-attention/1"
TINY_VAE_SCHEMA = "edgesd-bench-tiny-vae-quality/1"
SERVE_SCHEMA = "edgesd-bench-serve/1"
RAY_SCHEMA = "edgesd-bench-ray/1"
FIRST_IMAGE_SCHEMA = "edgesd-bench-first-image/1"
PROFILE_NAME = re.compile(r"profile-(.+)-(?:onnxruntime|openvino)-\d+\.txt")  # profile_unet.py's output, saved by folder name


def load(paths: list[Path]) -> tuple[list[dict], list[dict], list[dict], list[dict], list[str]]:
    """(compare.py results, `edgesd bench` results, precision.py results, lora.py/tiny_vae.py/ort_attention.py/serve.py/
    ray_batch.py results, skipped)."""
    compares, benches, precisions, others, skipped = [], [], [], [], []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            skipped.append(f"{path}: {e}")
            continue
        data["_file"] = str(path)
        if data.get("schema") == COMPARE_SCHEMA:
            compares.append(data)
        elif data.get("schema") == PRECISION_SCHEMA:
            precisions.append(data)
        elif data.get("schema") in (LORA_SCHEMA, TINY_VAE_SCHEMA, ORT_ATTENTION_SCHEMA, SERVE_SCHEMA, RAY_SCHEMA,
                                    FIRST_IMAGE_SCHEMA):
            others.append(data)
        elif "cold_start" in data and "warm" in data:
            benches.append(data)
        else:
            skipped.append(f"{path}: not a bench/compare.py, precision.py, lora.py, tiny_vae.py, ort_attention.py, serve.py, "
                           "ray_batch.py, first_image.py or `edgesd bench -o` result")
    order = {"sd15": 0, "sd-turbo": 1}
    compares.sort(key=lambda d: (d["models"]["edgesd"].get("family") or "", d["settings"]["resolution"],
                                 order.get(d.get("name") or "", 9), d.get("name") or ""))
    precisions.sort(key=lambda d: (d["name"], d["settings"]["resolution"]))
    return compares, benches, precisions, others, skipped


# ---------------------------------------------------------------------------------------------
# formatting


def _s(x, digits=2):
    return "–" if x is None else f"{x:.{digits}f}"


def _ms(x):
    return "–" if x is None else f"{x * 1e3:.0f}" if x >= 0.1 else f"{x * 1e3:.1f}"


def _ratio(x):
    return "–" if x is None else f"{x:.2f}"


def _mib(x):
    return "–" if x is None else f"{x:,.0f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def _title(d: dict) -> str:
    s = d["settings"]
    model = d.get("name") or Path(d["models"]["edgesd"]["path"]).name
    task = ", inpainting" if s.get("task") == "inpaint" else ""
    return f"{model}, {s['resolution']}x{s['resolution']}{task}"


def _anchor(text: str) -> str:
    return "".join(c for c in text.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def _counterpart(d: dict, key: str) -> tuple[str | None, float | None]:
    """The edgesd configuration this system is compared with, and edgesd time / this time."""
    for name, row in d.get("ratios", {}).items():
        if row["other"] == key:
            return row["edgesd"], row["time"]
    return None, None


def _output_cell(entry: dict) -> str:
    o = entry.get("output_vs_reference")
    if not o:
        return "–"
    if "mean_abs" not in o:
        return f"shape {o.get('shape')} vs {o.get('reference_shape')}"
    if o["max_abs"] == 0:
        return "identical"
    return f"{o['mean_abs']:.2f} / {o['max_abs']}"


# ---------------------------------------------------------------------------------------------
# sections


def machine_section(compares: list[dict], benches: list[dict]) -> list[str]:
    lines = ["## Machine", ""]
    seen = {}
    for d in compares:
        m = d.get("machine", {})
        seen.setdefault((m.get("cpu_model"), m.get("logical_cpus")), m)
    if not seen:
        return lines + ["(no comparison results)", ""]
    for m in seen.values():
        lines += [
            f"- CPU: **{m.get('cpu_model')}** ({m.get('vendor')}, family {m.get('cpu_family')} model "
            f"{m.get('model_number')}), {m.get('physical_cores')} physical cores / {m.get('logical_cpus')} logical CPUs "
            f"usable, {_s(m.get('clock_ghz'))} GHz ({m.get('clock_source')}), {m.get('isa')}",
            f"- Memory: {_s(m.get('memory_gib'), 1)} GiB; {m.get('platform')}",
            f"- Peak fp32: **{_s(m.get('peak_gflops'), 0)} GFLOP/s** = {m.get('physical_cores')} cores x "
            f"{_s(m.get('clock_ghz'))} GHz x {m.get('flops_per_cycle_per_core')} flops/cycle ({m.get('fp32_lanes')} "
            f"lanes x {m.get('fma_units')} FMA units x 2)" + (f"; {m['note']}" if m.get("note") else "") +
            (f" (flags alone would say {_s(m.get('peak_gflops_nominal'), 0)})"
             if m.get("peak_gflops_nominal") != m.get("peak_gflops") else ""),
        ]
    fp32_rates = [e["summary"]["achieved_gflops"] for d in compares for e in d["systems"].values()
                  if e.get("precision") == "fp32" and (e.get("summary") or {}).get("achieved_gflops")]
    m = next(iter(seen.values()))
    if fp32_rates and m.get("peak_gflops") and max(fp32_rates) > m["peak_gflops"]:
        implied = max(fp32_rates) / (m["physical_cores"] * m["flops_per_cycle_per_core"])
        lines.append(f"- That peak is a floor: fp32 UNet calls here reach {max(fp32_rates):.0f} GFLOP/s, so the cores "
                     f"run at {implied:.2f} GHz or more (boost; the hypervisor shows only the nominal clock). "
                     "The `% peak` column is against the nominal figure; bf16 rows can reach twice it "
                     "(AVX512-BF16 dot products do two multiply-adds per fp32 lane).")
    precisions = {d.get("openvino_cpu_default_precision") for d in compares} - {None}
    if precisions:
        lines.append(f"- OpenVINO's default CPU inference precision here: {', '.join(sorted(precisions))} "
                     "(what `auto` and the other OpenVINO systems' defaults compute in)")
    return lines + [""]


def headline_section(compares: list[dict]) -> list[str]:
    lines = ["## Headline: edgesd against each alternative", "",
             "Ratio = edgesd's time (or peak memory) / the other system's, same run, same settings: "
             "**below 1 means edgesd is faster (smaller)**. Peak memory is each system's whole-process peak "
             "(load included) in its own process.", ""]
    rows = []
    for d in compares:
        for name, r in d.get("ratios", {}).items():
            rows.append([_title(d), f"`{r['edgesd']}` / `{r['other']}`", _ratio(r["time"]), _ratio(r["unet_call"]),
                         _ratio(r.get("peak_rss_mib"))])
    if not rows:
        return lines + ["(no system besides edgesd ran)", ""]
    lines += _table(["run", "edgesd / other", "total time", "UNet call", "peak memory"], rows)
    targets = [(d, t) for d in compares for t in d.get("targets", [])]
    if targets:
        lines += ["", "Targets (issues 6 and 15):", ""]
        rows = []
        for d, t in targets:
            met = {True: "**met**", False: "not met", None: "–"}[t["met"]]
            what = {"time": "time", "first_image": "time to the first image"}.get(t["quantity"], "peak memory")
            rows.append([_title(d), f"`{t['edgesd']}` {what} <= {t['bound']} x `{t['other']}`", _ratio(t["ratio"]), met])
        lines += _table(["run", "target", "ratio", ""], rows)
    return lines + [""]


def _folder(model: dict) -> str:
    """A model folder as the report names it: its path, UNet precision and size."""
    unet_precision = ", ".join(f"{k} {v}" for k, v in model.get("unet_precision", {}).items())
    size = f", {model['files_mib']:,.0f} MiB of files" if model.get("files_mib") else ""
    return f"`{model.get('path')}` (UNet {unet_precision}{size})"


def run_section(d: dict, chart_name: str | None) -> list[str]:
    s = d["settings"]
    model = d["models"]["edgesd"]
    flops = d.get("unet_flops")
    systems = d["systems"]
    unet_calls = next((e["summary"].get("unet_calls_per_run") for e in systems.values() if e.get("summary")), None)
    lines = [f"## {_title(d)}", ""]
    calls = _s(unet_calls, 0) if unet_calls is not None else "?"
    own = d["models"].get("tiny_vae_model")
    lines.append(
        f"{model.get('family')} model {_folder(model)}"
        f"{f', `edgesd-ov-tiny-vae` on {_folder(own)}' if own else ''}; "
        f"{s['resolution']}x{s['resolution']} px, {s['steps']} steps, strength {s['strength']}, guidance {s['guidance']} "
        f"(UNet batch {s['unet_batch']}, latent {s['latent'][0]}x{s['latent'][1]}, "
        f"{calls} UNet calls per image), seed {s['seed']}. "
        f"{s['repeat']} rounds x {s['runs_per_turn']} timed call(s) per system, {s['warmup']} warm-up call(s) after each "
        f"load, order rotated each round, isolation: {s['isolation']}. Recorded {d.get('created')}"
        f"{' with edgesd ' + d['edgesd_commit'] if d.get('edgesd_commit') else ''}, "
        f"{_s(d.get('duration_s', 0) / 60, 1)} min.")
    if flops:
        lines.append("")
        by_op = ", ".join(f"{k} {v['gflop']:.1f}" for k, v in flops["by_op"].items())
        lines.append(f"UNet work per call: **{flops['gflop']:.1f} GFLOP** "
                     f"({by_op}; counted by "
                     f"bench/flops.py from `{Path(flops['model']).name}`, 2 flops per MAC)."
                     + (f" {len(flops['unresolved'])} compute nodes had unknown shapes." if flops.get("unresolved") else ""))
    elif d.get("unet_flops_reason"):
        lines += ["", f"UNet FLOPs not counted: {d['unet_flops_reason']}."]
    lines.append("")
    rows, not_run = [], []
    for key, e in systems.items():
        sm = e.get("summary") or {}
        if e["status"] != "ok" or not sm:
            not_run.append((key, e))
            continue
        edgesd, ratio = _counterpart(d, key)
        total = sm["total"]
        prec = e.get("info", {}).get("effective_precision")
        precision = e["precision"] + (f" ({prec})" if prec and e["precision"] == "auto" else "")
        rows.append([
            f"`{key}`", e["label"].split(",")[0], e["engine"], precision,
            f"**{_s(total['median'])}** ({_s(total['min'])}–{_s(total['max'])}, n={total['n']})",
            f"{_ratio(ratio)} (`{edgesd}`)" if edgesd else "–",
            _ms((sm.get("unet_call") or {}).get("median")),
            (f"{sm['achieved_gflops']:.0f} ({sm['share_of_peak']:.0%})" if sm.get("achieved_gflops") and sm.get("share_of_peak")
             else _s(sm.get("achieved_gflops"), 0)),
            _mib(sm.get("peak_rss_mib")), _mib(sm.get("run_peak_rss_mib")),
            _s(sm.get("load_s"), 1), _s(sm.get("first_run_s")), _s(sm.get("first_image_s"), 1), _output_cell(e),
        ])
    lines += _table(["system", "project", "engine", "precision", "total s: median (min–max)", "edgesd / this",
                     "UNet call ms", "UNet GFLOP/s (% nominal fp32 peak)", "peak RSS MiB", "RSS in timed calls MiB", "load s",
                     "first call s", "first image s (import + load + first call)", f"output vs {d.get('output_reference') or 'reference'} (mean / max)"], rows)
    lines += ["", "Per stage (median seconds per image; time inside each submodel, `other` = the rest):", ""]
    srows = []
    ran = [e["summary"] for e in systems.values() if e["status"] == "ok" and e.get("summary")]
    stages = [st for st in STAGES if st != "controlnet" or any(sm["stages"].get(st) for sm in ran)]  # (results before ControlNets)
    for key, e in systems.items():
        sm = e.get("summary") or {}
        if e["status"] == "ok" and sm:
            srows.append([f"`{key}`"] + [_s(sm["stages"].get(st, 0.0), 3) for st in stages] + [_s(sm["total"]["median"], 3)])
    lines += _table(["system", *stages, "total"], srows)
    shares = {key: e["summary"]["controlnet_per_unet"] for key, e in systems.items()
              if e["status"] == "ok" and (e.get("summary") or {}).get("controlnet_per_unet")}
    if shares:
        lines += ["", "The ControlNet's cost per step as a share of the UNet's: "
                  + ", ".join(f"`{key}` {share:.2f}" for key, share in shares.items())]
    if not_run:
        lines += ["", "Could not run here:", ""]
        for key, e in not_run:
            lines.append(f"- `{key}` ({e['label']}): **{e['status']}**: {e.get('reason', 'no timed run')}")
    notes = []
    for key, e in systems.items():
        if e.get("adapted"):
            notes.append(f"- `{key}` ran on a prepared copy of the folder: " + "; ".join(e["adapted"]) + ".")
        info = e.get("info") or {}
        if info.get("dynamic_shapes"):
            notes.append(f"- `{key}` ran with its default dynamic shapes ({info.get('ov_config')}).")
    if notes:
        lines += ["", "Notes:", ""] + notes
    lines += ["", "Reproduce (from the repository root, with the model folders built as in bench/README.md), "
              "the whole table:", "", "```bash", d["command"], "```", "",
              "one row alone (a ratio needs its edgesd row too: `--systems edgesd-ort,optimum-ort`):", "", "```bash"]
    lines += [cmd for cmd in d.get("reproduce", {}).values()] + ["```", ""]
    return lines


def bench_section(benches: list[dict]) -> list[str]:
    if not benches:
        return []
    lines = ["## `edgesd bench` (runtime alone)", ""]
    rows = []
    for b in benches:
        w = b["warm"]
        st = b.get("settings", {})
        cmd = (f"edgesd bench {shlex.quote(b['model'])} --backend {b['backend']} --precision {b['precision']} "
               f"--resolution {b['resolution']} --steps {st.get('num_inference_steps')} --strength {st.get('strength')} "
               f"--guidance {st.get('guidance_scale')}{' --low-memory' if b.get('low_memory') else ''} -o FILE")
        rows.append([f"`{Path(b['model']).name}`", b["backend"], b["precision"], "low" if b.get("low_memory") else "normal",
                     b["resolution"],
                     _s(b["cold_start"]["load"], 1), _s(b["cold_start"]["first_run"]),
                     _s(w["total"]["median"]), _ms(w.get("step", {}).get("median")),
                     _mib(b.get("peak_rss_mib")), _mib(b.get("model_folder_mib")), f"`{cmd}`"])
    lines += _table(["model", "backend", "precision", "memory mode", "px", "load s", "first run s", "warm total s", "step ms",
                     "peak RSS MiB", "folder MiB", "command"], rows)
    return lines + [""]


def precision_section(precisions: list[dict]) -> list[str]:
    if not precisions:
        return []
    lines = ["## Precisions (issue 5)", "",
             "Each precision of one model against its own fp32 export, on each backend, by `bench/precision.py` "
             "(`edgesd bench` in a fresh process per row, rows alternating; medians over rounds). Inference "
             "precision `auto` is the backend's default (OpenVINO: bf16 on this CPU); `f32` forces exact fp32. "
             "Disk: that format's files. Fidelity: output PSNR/SSIM against the fp32 folder on the same backend "
             "in exact fp32 compute, and the UNet noise prediction's cosine similarity (edgesd.export.fidelity); "
             "with random weights these are indicative only.", ""]
    shown = set()  # profiles of a folder in several results: under the first
    for d in precisions:
        s = d["settings"]
        lines += [f"### {d['name']}, {s['resolution']}x{s['resolution']}", "",
                  f"{s['steps']} steps, strength {s['strength']}, guidance {s['guidance']}; {s['rounds']} rounds x "
                  f"{s['repeat']} warm run(s) after the cold one; recorded {d['created']}, "
                  f"{_s(d['duration_s'] / 60, 1)} min.", ""]
        rows = []
        for key, r in d["rows"].items():
            sm, fid = r["summary"], r.get("fidelity") or {}
            base = d["rows"].get(f"{r['backend']}/fp32", {}).get("summary", {})
            speed = sm.get("step_s") / base["step_s"] if sm.get("step_s") and base.get("step_s") else None
            quality = ("fp32 reference" if r["precision"] == "fp32" else
                       f"{_s(fid['psnr_mean'], 1)} dB / {_s(fid['ssim_mean'], 3)} / {_s(fid.get('unet_cosine_mean'), 4)}"
                       if "psnr_mean" in fid else ("error: " + " ".join(fid["error"]) if "error" in fid else "not measured in this run"))
            rows.append([f"`{key}`", r["backend"], r["precision"], "f32" if key.endswith("/f32") else "auto",
                         _mib(r["disk_mib"]), _mib(sm.get("peak_rss_mib")), _ms(sm.get("step_s")), _ratio(speed),
                         _s(sm.get("total_s")), _s(sm.get("load_s"), 1), _s(sm.get("first_run_s")), quality]
                        if "error" not in sm else [f"`{key}`", r["backend"], r["precision"], "", "", "", "", "", "", "", "",
                                                   "failed: " + " ".join(sm["error"])])
        lines += _table(["row", "backend", "stored", "compute", "disk MiB", "peak RSS MiB", "UNet call ms",
                         "vs backend fp32", "warm total s", "load s", "cold first run s",
                         "PSNR / SSIM / UNet cosine vs fp32"], rows)
        if d.get("targets"):
            lines += ["", "Targets:", ""]
            lines += _table(["target", "ratio", "bound", ""],
                            [[f"{t['what']} (`{t['row']}` / `{t['against']}`)", _ratio(t["ratio"]), t["bound"],
                              {True: "**met**", False: "not met", None: "–"}[t["met"]]] for t in d["targets"]])
        lines += ["", "```bash", d["command"]] + d.get("fidelity_commands", []) + ["```", ""]
        folders = {Path(r["folder"]).name for r in d["rows"].values()}
        profiles = [p for p in sorted(Path(d["_file"]).parent.glob(f"profile-*-{s['resolution']}.txt"))
                    if (m := PROFILE_NAME.fullmatch(p.name)) and m[1] in folders and p not in shown]
        shown.update(profiles)
        if profiles:
            lines += ["One UNet call per operator type, by `bench/profile_unet.py` (which ops ran in which precision; "
                      "the reading is in bench/README.md, *Measured here*):", ""]
            for profile in profiles:
                lines += [f"`{profile.name}`:", "", "```", profile.read_text().rstrip(), "```", ""]
    return lines


def tiny_vae_section(results: list[dict]) -> list[str]:
    if not results:
        return []
    lines = ["## Tiny VAE: image-quality cost", "",
             "The same latents (the model's own img2img) decoded by the model's VAE and by the tiny one, by "
             "`bench/tiny_vae.py`; PSNR/SSIM between the two images. With random weights these only show the "
             "method; real weights give the cost users pay.", ""]
    for d in results:
        rows = [[str(r["seed"]), _s(r["psnr"], 1), _s(r["ssim"], 3), _ms(r["decode_s"]["full"]), _ms(r["decode_s"]["tiny"])]
                for r in d["rows"]]
        lines += [f"{Path(d['model']).name} + {Path(d['vae']).name}, {d['resolution']}x{d['resolution']}, {d['steps']} steps: "
                  f"PSNR {_s(d['psnr_mean'], 1)} dB, SSIM {_s(d['ssim_mean'], 3)} (means)", ""]
        lines += _table(["seed", "PSNR dB", "SSIM", "full VAE decode ms", "tiny VAE decode ms"], rows) + [""]
    return lines


def lora_section(loras: list[dict]) -> list[str]:
    if not loras:
        return []
    lines = ["## LoRA at load time (issue 14)", "",
             "Loading with and without a LoRA, by `bench/lora.py` (a fresh process per case, cases alternating; "
             "medians over rounds). Load: opening the pipeline (onnxruntime builds its sessions, merging the LoRA, "
             "here; OpenVINO compiles, and merges, on the first call). Peak: VmHWM after loading, and after one "
             "call at the given size.", ""]
    for d in loras:
        lines += [f"{Path(d['model']).name}, LoRA `{d['lora']['file']}` ({_s(d['lora']['mib'], 0)} MiB), "
                  f"{d['resolution']}x{d['resolution']}, {d['steps']} steps, {d['rounds']} rounds:", ""]
        rows = []
        for backend, cases in d["summary"].items():
            for case in ("no LoRA", "LoRA"):
                c = cases[case]
                rows.append([backend, case, _s(c["load_s"]), _s(c["call_s"]), _mib(c["peak_after_load_mib"]), _mib(c["peak_mib"])])
            r = cases["ratios"]
            rows.append([backend, "ratio", _ratio(r["load_s"]), _ratio(r["call_s"]), _ratio(r["peak_after_load_mib"]),
                         _ratio(r["peak_mib"])])
        lines += _table(["backend", "case", "load s", "first call s", "peak after load MiB", "peak MiB"], rows)
        lines += ["", "```bash", d["command"], "```", ""]
    return lines


def ort_attention_section(results: list[dict]) -> list[str]:
    if not results:
        return []
    lines = ["## onnxruntime's memory: the UNet's attention fused (issue 15)", "",
             "The same weights with the ONNX UNet's attention as torch.onnx writes it (edgesd <= 0.2, optimum) and "
             "fused into onnxruntime's MultiHeadAttention (`edgesd export` now), by `bench/ort_attention.py`: one "
             "call in a fresh process per folder, folders alternating, medians over rounds. Peak: the process's "
             "VmHWM (load included). Images: the two outputs, same seed.", ""]
    for d in results:
        summary = d["summary"]
        rows = [[case, _mib(c["peak_mib"]), _s(c["unet_call_s"]), _s(c["first_unet_call_s"]), _s(c["call_s"])]
                for case, c in ((case, summary[case]) for case in ("unfused", "fused"))]
        r = summary["ratios"]
        rows.append(["fused / unfused", _ratio(r["peak_mib"]), _ratio(r["unet_call_s"]), _ratio(r["first_unet_call_s"]),
                     _ratio(r["call_s"])])
        images = summary["images"]
        lines += [f"{Path(d['before']).name}, {d['resolution']}x{d['resolution']}, {d['steps']} steps at guidance 7.5 "
                  f"(UNet batch 2), {d['rounds']} rounds; images differ by at most {images['max_abs_levels']} level(s), "
                  f"{images['within_1_level']:.1%} of pixels within 1:", ""]
        lines += _table(["UNet attention", "peak MiB", "UNet call s (median)", "first UNet call s", "call s"], rows)
        lines += ["", "```bash", d["command"], "```", ""]
    return lines


def serve_section(results: list[dict]) -> list[str]:
    if not results:
        return []
    lines = ["## edgesd serve: the server's cost (issue 23)", "",
             "The same img2img call through the Python API and through the server on 127.0.0.1 (edgesd's "
             "/edgesd/v1/generate and A1111's /sdapi/v1/img2img, a PNG sent and PNGs read back), turns alternating, "
             "by `bench/serve.py`; then concurrent clients, one job at a time and the rest queued. Target: overhead "
             "<= 5%.", ""]
    for d in results:
        rows = [[way, _s(d["call_s"][way], 3), "–" if way == "python" else f"{d['overhead'][way]:+.1%}",
                 "–" if way == "python" else ("yes" if d["same_pixels"][way] else "NO")] for way in d["call_s"]]
        lines += [f"{d['model']} on {d['backend']}, {d['resolution']}x{d['resolution']}, {d['steps']} steps at strength "
                  f"{d['strength']}, guidance {d['guidance']}, {d['rounds']} rounds (medians):", ""]
        lines += _table(["way", "call s", "overhead", "same pixels as the API"], rows) + [""]
        rows = [[str(c["clients"]), str(c["requests"]), str(c["failed"]), _s(c["images_per_s"]), _s(c["latency_median_s"]),
                 _s(c["latency_max_s"])] for c in d["concurrency"]]
        lines += _table(["clients", "requests", "failed", "images/s", "latency median s", "latency max s"], rows)
        lines += ["", "```bash", d["command"], "```", ""]
    return lines


def ray_section(results: list[dict]) -> list[str]:
    if not results:
        return []
    lines = ["## A folder on Ray: its cost on one machine, and a cluster by the same numbers (issue 24)", "",
             "Whole `edgesd img2img -i FOLDER` commands (process start, model load, every image), the local batch "
             "against `--ray` on a running one-node cluster with 1 and 2 workers, turns alternating, by "
             "`bench/ray_batch.py`. The projection: each node runs one worker at the measured one-worker rate (its "
             "images' own time), after the same fixed part (start, join, load).", ""]
    for d in results:
        rows = [[name, " / ".join(_s(w, 1) for w in row["wall_seconds"]), _s(row["images_per_second"]),
                 f"{row['time_vs_local']:.2f}x"] for name, row in d["systems"].items()]
        lines += [f"{d['model']}, {d['images']} inputs at {d['resolution']}x{d['resolution']}, {d['rounds']} rounds on "
                  f"{d['machine']['cpus']} CPUs (the cluster's start, outside the timed commands: "
                  f"{d['cluster_start_seconds']:.1f} s):", ""]
        lines += _table(["system", "command s (each round)", "images/s", "time vs local"], rows) + [""]
        projection = d["cluster_projection"]
        rows = [[n, _s(p["images_per_second_steady"]), _s(p["seconds_for_1000"], 0)] for n, p in projection["nodes"].items()]
        lines += [f"A cluster of N such nodes (fixed part {projection['fixed_seconds']:.1f} s, "
                  f"{projection['node_images_per_second']:.2f} images/s a node):", ""]
        lines += _table(["nodes", "images/s", "s for 1000 inputs"], rows)
        lines += ["", "```bash", d["command"], "```", ""]
    return lines


def first_image_section(results: list[dict]) -> list[str]:
    if not results:
        return []
    lines = ["## A one-off run's first image per engine: what backend auto picks by (issue 25)", "",
             "A whole `edgesd img2img MODEL -i IMAGE` command per engine (process start, import, load, OpenVINO's "
             "compile for the input's shapes, the call, the save), turns alternating, by `bench/first_image.py`. "
             "`backend auto` takes onnxruntime below 256 MiB of weights and OpenVINO above "
             "(runtime/sessions/__init__.py).", ""]
    for d in results:
        rows = [[name, _s(m["weights_mib"], 0), *(f"{m['median'][b]['command']:.2f} ({m['median'][b]['load']:.2f} + "
                                                   f"{m['median'][b]['call']:.2f})" for b in ("onnxruntime", "openvino")),
                 f"{m['openvino_vs_onnxruntime']:.2f}x"] for name, m in d["models"].items()]
        steps = d["steps"] or "the model's"
        lines += [f"{d['resolution']}x{d['resolution']} input, {steps} steps, median of {d['rounds']} "
                  f"rounds on {d['machine']['cpus']} CPUs:", ""]
        lines += _table(["model", "weights MiB", "onnxruntime command s (load + call)", "openvino command s (load + call)",
                         "openvino / onnxruntime"], rows)
        lines += ["", "```bash", d["command"], "```", ""]
    return lines


def versions_section(compares: list[dict]) -> list[str]:
    if not compares:
        return []
    names = []
    for d in compares:
        for k in d.get("versions", {}):
            if k not in names:
                names.append(k)
    lines = ["## Versions", ""]
    header = ["package"] + [_title(d) for d in compares]
    rows = [[n] + [str(d.get("versions", {}).get(n) or "not installed") for d in compares] for n in names]
    if all(len({r[i] for i in range(1, len(r))}) == 1 for r in rows):
        header, rows = ["package", "version"], [[r[0], r[1]] for r in rows]
    return lines + _table(header, rows) + [""]


def chart(compares: list[dict], path: Path) -> str | None:
    """Stacked per-stage latency bars, one panel per run; returns why not, or None when written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'edgesd[bench]')"
    panels = [d for d in compares if any(e["status"] == "ok" and e.get("summary") for e in d["systems"].values())]
    if not panels:
        return "no system ran"
    colors = {"text": "#8da0cb", "encode": "#66c2a5", "unet": "#fc8d62", "controlnet": "#ffd92f", "decode": "#e78ac3", "other": "#b3b3b3"}
    heights = [max(1, sum(1 for e in d["systems"].values() if e["status"] == "ok")) for d in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 1.2 + 0.42 * sum(heights) + 0.7 * len(panels)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, d in zip(axes[:, 0], panels):
        keys = [k for k, e in d["systems"].items() if e["status"] == "ok" and e.get("summary")]
        keys.sort(key=lambda k: d["systems"][k]["summary"]["total"]["median"])
        for i, key in enumerate(keys):
            left = 0.0
            sm = d["systems"][key]["summary"]
            for st in STAGES:
                width = max(0.0, sm["stages"].get(st, 0.0))  # (no "controlnet" in results before ControlNets)
                ax.barh(i, width, left=left, color=colors[st], label=STAGE_LABELS[st] if i == 0 else None,
                        edgecolor="white", linewidth=0.5)
                left += width
            total = sm["total"]["median"]
            ax.text(total, i, f" {total:.2f} s", va="center", fontsize=8)
        ax.set_yticks(range(len(keys)), labels=keys, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("seconds per image (median)", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        s = d["settings"]
        ax.set_title(f"{_title(d)}: {s['steps']} steps, strength {s['strength']}, guidance {s['guidance']}", fontsize=9)
        ax.set_xlim(0, max(d["systems"][k]["summary"]["total"]["median"] for k in keys) * 1.15)
        ax.grid(axis="x", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    top = 1 - 0.55 / fig.get_figheight()
    fig.legend(handles, labels, loc="upper center", ncol=len(STAGES), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, top))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def render(paths: list[Path], out: Path, chart_path: Path | None, argv: list[str]) -> str:
    compares, benches, precisions, others, skipped = load(paths)
    chart_note = None
    if chart_path is not None:
        chart_note = chart(compares, chart_path)
    lines = ["# edgesd benchmarks", "",
             f"Generated by `python bench/report.py {shlex.join(argv)}` from {len(paths)} result "
             f"file(s) on {time.strftime('%Y-%m-%d')}; edit the scripts, not this file. How the numbers are taken: "
             "bench/README.md.", ""]
    if compares:
        lines.append("Runs: " + ", ".join(f"[{_title(d)}](#{_anchor(_title(d))})" for d in compares) + ".")
        lines.append("")
    lines += machine_section(compares, benches)
    lines += headline_section(compares)
    if chart_path is not None:
        if chart_note is None:
            rel = os.path.relpath(chart_path, out.parent)
            lines += [f"![Per-stage latency per system]({rel})", ""]
        else:
            lines += [f"(Chart not drawn: {chart_note}.)", ""]
    for d in compares:
        lines += run_section(d, None)
    lines += bench_section(benches)
    lines += precision_section(precisions)
    lines += lora_section([d for d in others if d["schema"] == LORA_SCHEMA])
    lines += tiny_vae_section([d for d in others if d["schema"] == TINY_VAE_SCHEMA])
    lines += ort_attention_section([d for d in others if d["schema"] == ORT_ATTENTION_SCHEMA])
    lines += serve_section([d for d in others if d["schema"] == SERVE_SCHEMA])
    lines += ray_section([d for d in others if d["schema"] == RAY_SCHEMA])
    lines += first_image_section([d for d in others if d["schema"] == FIRST_IMAGE_SCHEMA])
    lines += versions_section(compares)
    if skipped:
        lines += ["## Files not used", ""] + [f"- {s}" for s in skipped] + [""]
    text = "\n".join(lines).rstrip() + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text, chart_note


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="JSON files from bench/compare.py (or edgesd bench -o)")
    parser.add_argument("-o", "--out", type=Path, default=Path(__file__).resolve().parent / "REPORT.md")
    parser.add_argument("--chart", type=Path, help="PNG to draw (default: report.png beside the report)")
    parser.add_argument("--no-chart", action="store_true")
    args = parser.parse_args(argv)
    chart_path = None if args.no_chart else (args.chart or args.out.parent / "report.png")
    _, chart_note = render(args.results, args.out, chart_path, argv)
    drawn = chart_path is not None and chart_note is None
    print(f"wrote {args.out}" + (f" and {chart_path}" if drawn else f" (no chart: {chart_note})" if chart_note else ""),
          file=sys.stderr)


if __name__ == "__main__":
    main()

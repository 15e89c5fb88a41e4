"""Issue 5's table: every precision of one model on every backend, against its own fp32 export.

    # the precisions, from the fp32 export: a hard-linked copy converted by edgesd's own code
    python bench/precision.py build models/sd15 -o models/sd15-int8 --precision int8 [--calibration-samples 16]
    # OpenVINO int8 in optimum-intel's hybrid scheme (linear layers weight-only), for comparison
    python bench/precision.py build models/sd15 -o models/sd15-int8-hybrid --precision unet=int8 --formats openvino --hybrid
    # the table
    python bench/precision.py run models/sd15 fp16=models/sd15-fp16 int8-weights=models/sd15-int8-weights \\
        int8=models/sd15-int8 --resolution 256 --steps 4 --strength 0.5 --fidelity --out bench/results/precision-sd15-256.json

Each row is `edgesd bench --json` in a fresh process (cold start, then `--warmup` and `--repeat`
warm runs), rows alternating in an order rotated every round, so drift on a shared machine hits
all rows alike; the medians over rounds are reported. Rows: onnxruntime computes in the stored
precision; OpenVINO runs with its default inference precision (`auto`: bf16 on this CPU) and the
fp32 folder once more in exact f32. Disk size is the one format's files (manifest). Fidelity
(`--fidelity`) is edgesd.export.fidelity against the fp32 folder on the same backend: output PSNR
and SSIM, UNet noise-prediction cosine; `fidelity RESULT [--backends openvino]` adds it afterwards
to the rows that lack it. The ratios against issue 5's targets are in the JSON.
"""

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from edgesd.model_folder import MANIFEST
from edgesd.sessions import BACKENDS

SCHEMA = "edgesd-bench-precision/1"
ROOT = Path(__file__).resolve().parent.parent
TARGETS = (  # (what, numerator row, denominator row, quantity, bound)
    ("int8 UNet call on onnxruntime", ("onnxruntime", "int8", "auto"), ("onnxruntime", "fp32", "auto"), "step", 0.6),
    ("int8 UNet call on OpenVINO, against bf16", ("openvino", "int8", "auto"), ("openvino", "fp32", "auto"), "step", 0.7),
    ("int8-weights folder size, ONNX", ("onnxruntime", "int8-weights", "auto"), ("onnxruntime", "fp32", "auto"), "disk", 0.3),
    ("int8-weights folder size, OpenVINO", ("openvino", "int8-weights", "auto"), ("openvino", "fp32", "auto"), "disk", 0.3),
)


def build(args) -> None:
    """Hard-link the fp32 folder (the converters replace files, never write into them), then convert."""
    from edgesd.export.precision import parse_precision
    from edgesd.export.quantize import quantize_folder
    from edgesd.export.quantize_openvino import to_int8

    src, dst = Path(args.fp32), Path(args.output)
    if dst.exists():
        sys.exit(f"{dst} exists; remove it first")
    manifest = json.loads((src / MANIFEST).read_text())
    formats = [f for f in args.formats if f in manifest["submodels"]["unet"]["formats"]]
    # Not precisions `edgesd export` offers: optimum-intel's scheme, or SmoothQuant off (a speed proxy where it
    # does not fit in memory: SDXL here), for comparison.
    scheme = {"hybrid": args.hybrid, "smooth_quant": not args.no_smooth_quant}
    converters = {("openvino", "int8"): partial(to_int8, **scheme)} if args.hybrid or args.no_smooth_quant else None
    scratch = dst.with_name(f".{dst.name}.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(src, scratch, copy_function=_link_or_copy)
    t0 = time.perf_counter()
    quantize_folder(scratch, formats, parse_precision(args.precision), calibration_images=args.calibration_images,
                    calibration_samples=args.calibration_samples, calibration_size=args.calibration_size,
                    converters=converters)
    scratch.rename(dst)
    print(f"{dst}: {args.precision} ({', '.join(formats)}) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def _link_or_copy(src: str, dst: str) -> None:
    # The manifest is rewritten in place, and onnx refuses external data with several links.
    if src.endswith((MANIFEST, ".onnx_data")):
        shutil.copy2(src, dst)
    else:
        os.link(src, dst)


def disk_mib(folder: Path, fmt: str) -> float:
    """The bytes one format needs: its submodel files (manifest) plus the tokenizer and configs."""
    manifest = json.loads((folder / MANIFEST).read_text())
    models = sum(f["bytes"] for sub in manifest["submodels"].values() for f in sub["formats"][fmt]["files"].values())
    shared = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.suffix not in
                 (".onnx", ".onnx_data", ".xml", ".bin"))
    return (models + shared) / 2**20


def _rows(variants: dict, backends: list[str]) -> list[tuple[str, str, str]]:
    rows = []
    for backend in backends:
        for name in variants:
            rows.append((backend, name, "auto"))
            if backend == "openvino" and name == "fp32":
                rows.append((backend, name, "fp32"))
    return rows


def _key(row) -> str:
    backend, name, inference = row
    return f"{backend}/{name}" + ("/f32" if inference == "fp32" else "")  # only OpenVINO's fp32 row runs twice


def bench_row(row, folder: Path, args, work: Path) -> dict:
    backend, _, inference = row
    out = work / f"{_key(row).replace('/', '-')}-{time.monotonic_ns()}.json"
    cmd = [str(Path(sys.executable).with_name("edgesd")), "bench", str(folder), "--backend", backend, "--device", "cpu",
           "--precision", inference, "--resolution", str(args.resolution), "--steps", str(args.steps),
           "--strength", str(args.strength), "--guidance", str(args.guidance), "--repeat", str(args.repeat),
           "--warmup", str(args.warmup), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(out.read_text())


def fidelity(folder: Path, reference: Path, backend: str, args) -> dict:
    cmd = [sys.executable, "-m", "edgesd.export.fidelity", str(folder), str(reference), "--backend", backend,
           "--steps", str(args.steps), "--strength", str(args.strength), "--guidance", str(args.guidance),
           "--size", str(args.resolution)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(proc.stdout)


def _median(values):
    return statistics.median(values) if values else None


def summarise(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[-1]["error"] if runs else "not run"}
    return {
        "step_s": _median([r["warm"]["step"]["median"] for r in ok]),
        "total_s": _median([r["warm"]["total"]["median"] for r in ok]),
        "stages_s": {st: _median([r["warm"][st]["median"] for r in ok]) for st in ("text", "encode", "decode")},
        "load_s": _median([r["cold_start"]["load"] for r in ok]),
        "first_run_s": _median([r["cold_start"]["first_run"] for r in ok]),
        "peak_rss_mib": _median([r["peak_rss_mib"] for r in ok]),
        "unet_steps": ok[0]["unet_steps"],
        "rounds": len(ok),
    }


def run(args, argv) -> None:
    from edgesd.model_folder import open_model_folder

    reference = Path(args.fp32)
    variants = {"fp32": reference}
    for spec in args.variants:
        name, _, path = spec.partition("=")
        variants[name] = Path(path)
    formats = [BACKENDS[b].format for b in args.backends]
    for folder in variants.values():  # hash checks once, before any timing
        open_model_folder(folder).verify_once(formats)
    rows = _rows(variants, args.backends)
    results = {_key(r): {"backend": r[0], "precision": r[1], "inference_precision": r[2], "folder": str(variants[r[1]]),
                         "disk_mib": disk_mib(variants[r[1]], BACKENDS[r[0]].format), "runs": []} for r in rows}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="edgesd-precision-") as work:
        for round_index in range(args.rounds):
            order = rows[round_index % len(rows):] + rows[:round_index % len(rows)]
            for row in order:
                print(f"round {round_index + 1}/{args.rounds}: {_key(row)}", file=sys.stderr, flush=True)
                results[_key(row)]["runs"].append(bench_row(row, variants[row[1]], args, Path(work)))
    for key, entry in results.items():
        entry["summary"] = summarise(entry["runs"])
        if args.fidelity and entry["precision"] != "fp32":
            print(f"fidelity: {key}", file=sys.stderr, flush=True)
            entry["fidelity"] = fidelity(Path(entry["folder"]), reference, entry["backend"], args)
    data = {
        "schema": SCHEMA,
        "name": args.name or reference.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": time.time() - started,
        "command": "python bench/precision.py " + shlex.join(argv),
        "settings": {k: getattr(args, k) for k in ("resolution", "steps", "strength", "guidance", "repeat", "warmup", "rounds")},
        "manifests": {name: json.loads((folder / MANIFEST).read_text())["provenance"].get("options", {})
                      for name, folder in variants.items()},
        "rows": results,
        "targets": targets(results),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(data, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)


def add_fidelity(args, argv) -> None:
    """Measure fidelity afterwards for the rows of a `run` result that lack it (e.g. one backend at a
    size where two fp32 pipelines of the other backend do not fit in memory together)."""
    data = json.loads(Path(args.result).read_text())
    s = data["settings"]
    for name in ("resolution", "steps", "strength", "guidance"):
        setattr(args, name, s[name])
    reference = Path(next(e["folder"] for e in data["rows"].values() if e["precision"] == "fp32"))
    for key, entry in data["rows"].items():
        if entry["precision"] != "fp32" and entry["backend"] in args.backends and "psnr_mean" not in entry.get("fidelity", {}):
            print(f"fidelity: {key}", file=sys.stderr, flush=True)
            entry["fidelity"] = fidelity(Path(entry["folder"]), reference, entry["backend"], args)
    data.setdefault("fidelity_commands", []).append("python bench/precision.py " + shlex.join(argv))
    Path(args.result).write_text(json.dumps(data, indent=2))


def targets(results: dict) -> list[dict]:
    out = []
    for what, num, den, quantity, bound in TARGETS:
        a, b = results.get(_key(num)), results.get(_key(den))
        if not a or not b:
            continue
        if quantity == "disk":
            ratio = a["disk_mib"] / b["disk_mib"]
        else:
            x, y = a["summary"].get("step_s"), b["summary"].get("step_s")
            ratio = x / y if x and y else None
        out.append({"what": what, "row": _key(num), "against": _key(den), "quantity": quantity, "bound": bound,
                    "ratio": ratio, "met": None if ratio is None else ratio <= bound})
    return out


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="convert a copy of the fp32 export to another precision")
    b.add_argument("fp32", help="fp32 edgesd model folder")
    b.add_argument("-o", "--output", required=True)
    b.add_argument("--precision", required=True, help="as `edgesd export --precision`")
    b.add_argument("--calibration-images", type=Path)
    b.add_argument("--calibration-samples", type=int, default=32)
    b.add_argument("--calibration-size", type=int, help="square image side to calibrate at (default: the model's, at most 256)")
    b.add_argument("--formats", type=lambda s: s.split(","), default=["onnx", "openvino"])
    b.add_argument("--hybrid", action="store_true",
                   help="OpenVINO int8 in optimum-intel's hybrid scheme: linear layers weight-only, SmoothQuant off")
    b.add_argument("--no-smooth-quant", action="store_true",
                   help="OpenVINO int8 with the linear layers int8 but SmoothQuant off (the same kernels; fits where it does not)")
    r = sub.add_parser("run", help="benchmark the precisions side by side")
    r.add_argument("fp32", help="fp32 edgesd model folder (the reference)")
    r.add_argument("variants", nargs="*", help="NAME=FOLDER for each other precision, NAME as in --precision")
    r.add_argument("--backends", type=lambda s: s.split(","), default=["onnxruntime", "openvino"])
    r.add_argument("--resolution", type=int, default=512)
    r.add_argument("--steps", type=int, default=4)
    r.add_argument("--strength", type=float, default=0.5)
    r.add_argument("--guidance", type=float, default=7.5)
    r.add_argument("--repeat", type=int, default=1, help="timed warm runs per row and round")
    r.add_argument("--warmup", type=int, default=0, help="untimed runs after the cold first run")
    r.add_argument("--rounds", type=int, default=2)
    r.add_argument("--fidelity", action="store_true", help="also measure PSNR/SSIM/UNet cosine against fp32")
    r.add_argument("--timeout", type=float, default=1800)
    r.add_argument("--name")
    r.add_argument("--out", required=True)
    f = sub.add_parser("fidelity", help="add fidelity to the rows of a `run` result that lack it")
    f.add_argument("result", help="JSON written by `run`")
    f.add_argument("--backends", type=lambda s: s.split(","), default=["onnxruntime", "openvino"])
    f.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)
    {"build": build, "run": lambda a: run(a, argv), "fidelity": lambda a: add_fidelity(a, argv)}[args.command](args)


if __name__ == "__main__":
    main()

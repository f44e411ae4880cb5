"""CPU INT8 with and without VNNI: the mAP each INT8 build keeps, on this CPU and on an AVX2 CPU without VNNI.

On an x86 CPU without VNNI, 8-bit weights make ONNX Runtime's and OpenVINO's U8S8 kernels saturate
(``stages/deploy/int8.py`` says why); ``deploy.int8.target_cpu`` picks the build for the CPU the
artifact runs on. This script measures, with the project's own quantizer (``stages.deploy.int8``),
mAP code (``stages.deploy.accuracy``) and gate (``stages.deploy.build.judge``), on the demo model
(the sample dataset, params.yaml's training, through ``dvc repro evaluate`` in a throw-away copy):

- every INT8 build: ONNX Runtime U8S8 with 8-bit weights (``vnni``) and with ``reduce_range``
  (``no-vnni``); OpenVINO INT8 as NNCF built it before (its defaults: overflow fix on the first
  layer only, the head tail named by ONNX node names that were not checked), with the overflow fix
  off (``vnni``) and on every layer (``no-vnni``), next to the FP32 ONNX and OpenVINO models;
- the mAP50-95 of each on this machine's CPU, and on an AVX2 CPU without VNNI or AVX-512: the same
  files run by the same ONNX Runtime and OpenVINO under ``qemu-x86_64 -cpu Haswell`` (user-mode
  emulation; the libraries see Haswell's CPUID and pick the kernels they pick on such a CPU, which
  saturate as the real ones do), the raw outputs replayed through the same mAP code (float kernels
  take minutes per image under emulation, so the FP32 models' outputs are compared on two images instead);
- the ``export`` stage itself with ``deploy.int8.target_cpu`` at ``auto`` and at ``no-vnni``: which
  artifacts it ships and what ``reports/deploy.json`` records;
- latency on this machine's CPU (never under emulation): FP32, U8S8 and reduce_range ONNX models in
  interleaved rounds of bare ``session.run`` calls (median of the round p50s).

Appends a markdown table to ``benchmarks/results/int8_cpu.md``. Not a test: the numbers depend on the
machine. Needs ``qemu-x86_64`` (Debian: ``apt-get install qemu-user``) for the no-VNNI columns; without
it they are left out and the table says so.

Usage::

    python benchmarks/int8_cpu.py [--workspace DIR] [--train-model yolo11n.yaml] [--rounds 7] [--iterations 50]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "int8_cpu.md"
sys.path.insert(0, str(REPO))

from results_file import publish  # noqa: E402 - beside this script

from stages.backends import open_runner  # noqa: E402
from stages.backends.base import predict_all  # noqa: E402
from stages.backends.inference import load_inputs  # noqa: E402
from stages.core.config import load_params  # noqa: E402
from stages.core.fingerprint import PACKAGES, cpu_int8_extensions, cpu_model, package_version  # noqa: E402
from stages.deploy.accuracy import calibration_inputs, detection_map, labelled_split  # noqa: E402
from stages.deploy.build import judge  # noqa: E402
from stages.deploy.int8 import head_tail_nodes, quantize, quantize_openvino  # noqa: E402
from tests.conftest import venv_env  # noqa: E402
from tests.e2e.workspace import Workspace  # noqa: E402 - the workspace builder the e2e tests use

EMULATED_CPU = "Haswell"  # AVX2 and FMA, no AVX-512, no VNNI
FP32_PROBE = 2  # images the FP32 models run under emulation

# Run under qemu: only numpy and the runtime are imported (torch under emulation would take minutes).
_RUN_ONNX = """
import sys, numpy as np, onnxruntime as ort
options = ort.SessionOptions(); options.intra_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], sess_options=options, providers=["CPUExecutionProvider"])
x, name = np.load(sys.argv[2]), session.get_inputs()[0].name
np.save(sys.argv[3], np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))]))
"""
_RUN_OPENVINO = """
import sys, numpy as np, openvino as ov
core = ov.Core()
compiled = core.compile_model(sys.argv[1], "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
request, x = compiled.create_infer_request(), np.load(sys.argv[2])
outputs = [np.asarray(request.infer({0: x[i : i + 1]})[compiled.outputs[0]]) for i in range(len(x))]
np.save(sys.argv[3], np.concatenate(outputs))
"""


class Replay:
    """A runner that answers with outputs recorded elsewhere (under emulation) for the same input images."""

    batch = 1

    def __init__(self, inputs: np.ndarray, outputs: np.ndarray) -> None:
        self.by_image = {hashlib.sha1(x.tobytes()).hexdigest(): y for x, y in zip(inputs, outputs, strict=True)}

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.stack([self.by_image[hashlib.sha1(np.ascontiguousarray(i).tobytes()).hexdigest()] for i in x])


def emulated(backend: str, path: Path, inputs: Path, scratch: Path) -> np.ndarray:
    """Raw outputs of ``path`` on ``inputs``, run under ``qemu-x86_64 -cpu Haswell``."""
    out = scratch / f"{path.parent.name}-{path.stem}.out.npy"
    code = _RUN_ONNX if backend == "onnxruntime" else _RUN_OPENVINO
    proc = subprocess.run(
        ["qemu-x86_64", "-cpu", EMULATED_CPU, sys.executable, "-c", code, str(path), str(inputs), str(out)],
        capture_output=True,
        text=True,
        env=venv_env(),
    )
    if proc.returncode != 0:
        raise SystemExit(f"{path} under qemu failed:\n{proc.stderr[-3000:]}")
    return np.load(out)


def emulated_cpu_flags() -> dict[str, bool]:
    """What numpy detects under the emulation: the proof that AVX2 is there and VNNI and AVX-512 are not."""
    code = (
        "import json, numpy as np; f = np._core._multiarray_umath.__cpu_features__; "
        "print(json.dumps({k: f[k] for k in ('AVX2', 'AVX512F', 'AVX512BW', 'AVX512VNNI', 'AVXVNNI') if k in f}))"
    )
    proc = subprocess.run(
        ["qemu-x86_64", "-cpu", EMULATED_CPU, sys.executable, "-c", code], capture_output=True, text=True
    )
    return json.loads(proc.stdout)


def nncf_before(source: Path, out: Path, images: np.ndarray) -> Path:
    """OpenVINO INT8 as the pipeline built it before: NNCF's defaults, ONNX node names ignored unchecked."""
    import nncf
    import onnx
    import openvino as ov

    model = ov.convert_model(str(source))
    quantized = nncf.quantize(
        model,
        nncf.Dataset([images[i : i + 1] for i in range(len(images))]),
        subset_size=len(images),
        ignored_scope=nncf.IgnoredScope(names=head_tail_nodes(onnx.load(str(source))), validate=False),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out


def interleaved_p50(paths: dict[str, Path], inputs: np.ndarray, rounds: int, iterations: int) -> dict[str, float]:
    """Median of the round p50s of bare ``session.run`` calls on one image, the models taking turns each round."""
    import onnxruntime as ort

    sessions = {}
    for name, path in paths.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = len(os.sched_getaffinity(0))
        sessions[name] = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    feed = np.ascontiguousarray(inputs[:1])
    for session in sessions.values():
        for _ in range(10):
            session.run(None, {session.get_inputs()[0].name: feed})
    p50s: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            input_name, samples = session.get_inputs()[0].name, []
            for _ in range(iterations):
                started = time.perf_counter()
                session.run(None, {input_name: feed})
                samples.append((time.perf_counter() - started) * 1e3)
            p50s[name].append(statistics.median(samples))
    return {name: statistics.median(values) for name, values in p50s.items()}


def trained_workspace(tmp: Path, args: argparse.Namespace) -> Workspace:
    """The demo model: a project copy with the sample dataset and params.yaml's training, up to ``evaluate``."""
    if args.workspace and (args.workspace / "models" / "best.pt").is_file():
        home = args.workspace.parent / f"{args.workspace.name}-prefect"
        home.mkdir(exist_ok=True)
        # The stages it runs are this checkout's: the trained model is reused, the code is not.
        shutil.copytree(
            REPO / "stages", args.workspace / "stages", dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
        )
        return Workspace(args.workspace, home)
    root = args.workspace or tmp / "ws"
    root.mkdir(parents=True, exist_ok=True)
    home = root.parent / f"{root.name}-prefect"
    home.mkdir(exist_ok=True)
    ws = Workspace.create(root, home)
    params = yaml.safe_load((REPO / "params.yaml").read_text())  # the demo's params, not the e2e tests' tiny ones
    params["train"]["model"] = args.train_model
    ws.set_params(params)
    gen = ws.run("-m", "stages.data.sample_data", "--out", "data/dataset")
    if gen.returncode != 0:
        raise SystemExit(gen.stderr)
    ws.add_data()
    started = time.perf_counter()
    proc, _ran = ws.repro("evaluate")
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    print(f"trained and evaluated in {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
    return ws


def stage_runs(ws: Workspace) -> list[str]:
    """The export stage at ``target_cpu: auto`` and ``no-vnni``: what it ships and records, one line each."""
    lines = []
    for setting in ("auto", "no-vnni"):
        params = ws.params()
        params["deploy"]["targets"] = ["onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8"]
        params["deploy"]["int8"]["target_cpu"] = setting
        ws.set_params(params)
        proc = ws.run("-m", "stages.export")
        if proc.returncode != 0:
            raise SystemExit(f"export failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        metrics, facts = ws.json("metrics/deploy.json"), ws.json("reports/deploy.json")
        cpu = facts["onnx-int8"]["int8_cpu"]
        rows = ", ".join(
            f"`{name}` {m['map50_95']:.4f} ({-m['drop_map50_95'] * 100:+.2f} pt, "
            f"{'deployable' if m['deployable'] else 'NOT deployable'})"
            for name, m in metrics.items()
            if name != "pytorch" and "map50_95" in m
        )
        lines.append(
            f"- `target_cpu: {setting}` → built for `{cpu['target']}` ({cpu['chosen_by']}; reduce_range "
            f"{cpu['reduce_range']}, overflow fix {cpu['overflow_fix']}): "
            f"PyTorch {metrics['pytorch']['map50_95']:.4f}; {rows}"
        )
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def main() -> int:
    """Build every INT8 variant of the demo model, measure and gate each natively and without VNNI, record the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, help="reuse (or create) this trained workspace")
    parser.add_argument("--train-model", default="yolo11n.yaml", help="train.model of the demo run")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=50)
    args = parser.parse_args()
    qemu = shutil.which("qemu-x86_64") is not None

    with tempfile.TemporaryDirectory(prefix="int8-cpu-") as tmp_name:
        tmp = Path(tmp_name)
        ws = trained_workspace(tmp, args)
        params = load_params(ws.root / "params.yaml")
        stage_lines = stage_runs(ws)
        imgsz, conf, iou = params.train.imgsz, params.evaluate.conf, params.evaluate.iou
        data_yaml = ws.root / "data" / "prepared" / "data.yaml"
        onnx_path = ws.root / "models" / "deploy" / "model.onnx"
        data = labelled_split(data_yaml, "val", params.deploy.eval_images)
        reference = detection_map(
            open_runner("pytorch", ws.root / "models" / "best.pt", workspace=ws.root), data, imgsz, conf, iou
        )
        inputs = load_inputs(data.paths, imgsz)
        np.save(tmp / "inputs.npy", inputs)
        calibration = calibration_inputs(data_yaml, params.deploy.int8.calibration_images, imgsz)
        method = params.deploy.int8.calibration_method

        from stages.backends.openvino_rt import convert

        built = tmp / "built"
        u8s8, reduced = built / "u8s8" / "model.onnx", built / "reduce-range" / "model.onnx"
        quantize(onnx_path, u8s8, calibration, method)
        quantize(onnx_path, reduced, calibration, method, reduce_range=True)
        ov_vnni, ov_no_vnni = built / "ov-vnni" / "model.xml", built / "ov-no-vnni" / "model.xml"
        quantize_openvino(onnx_path, ov_vnni, calibration, method, "disable")
        quantize_openvino(onnx_path, ov_no_vnni, calibration, method, "enable")
        variants: list[tuple[str, str, str, Path]] = [  # label, backend, precision, file
            ("ONNX FP32", "onnxruntime", "fp32", onnx_path),
            ("ONNX INT8 U8S8, 8-bit weights (`vnni`)", "onnxruntime", "int8", u8s8),
            ("ONNX INT8 U8S8, reduce_range: 7-bit weights (`no-vnni`)", "onnxruntime", "int8", reduced),
            ("OpenVINO FP32", "openvino", "fp32", convert(onnx_path, built / "ov-fp32" / "model.xml")),
            (
                "OpenVINO INT8 before (NNCF defaults: mean-of-batches activation ranges, "
                "overflow fix on the first layer only)",
                "openvino",
                "int8",
                nncf_before(onnx_path, built / "ov-before" / "model.xml", calibration),
            ),
            ("OpenVINO INT8, overflow fix disable (`vnni`)", "openvino", "int8", ov_vnni),
            ("OpenVINO INT8, overflow fix enable (`no-vnni`)", "openvino", "int8", ov_no_vnni),
        ]
        limits = params.deploy.max_drop
        rows: list[list[str]] = []
        np.save(tmp / "probe.npy", inputs[:FP32_PROBE])
        for label, backend, precision, path in variants:
            runner = open_runner(backend, path, workspace=ws.root, precision=precision)
            native = detection_map(runner, data, imgsz, conf, iou)
            drop, deployable, _reason = judge(
                reference.map50_95, native.map50_95, getattr(limits, precision), precision
            )
            cells = [label, f"{native.map50_95:.4f}", f"{-drop * 100:+.2f} pt, {'yes' if deployable else '**no**'}"]
            started = time.perf_counter()
            if not qemu:
                cells += ["—", "—"]
            elif precision == "fp32":
                # Float kernels under emulation are slow (minutes per image): the outputs are compared instead.
                diff = np.abs(
                    emulated(backend, path, tmp / "probe.npy", tmp) - predict_all(runner, inputs[:FP32_PROBE])
                )
                cells += ["—", f"outputs as on this CPU (max abs diff {diff.max():.1e} on {FP32_PROBE} images)"]
            else:
                replay = Replay(inputs, emulated(backend, path, tmp / "inputs.npy", tmp))
                accuracy = detection_map(replay, data, imgsz, conf, iou)  # type: ignore[arg-type]
                drop, deployable, _reason = judge(reference.map50_95, accuracy.map50_95, limits.int8, precision)
                cells += [f"{accuracy.map50_95:.4f}", f"{-drop * 100:+.2f} pt, {'yes' if deployable else '**no**'}"]
            print(f"{label}: emulated in {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
            rows.append(cells)
            print(" | ".join(cells), file=sys.stderr, flush=True)
        speed = interleaved_p50(
            {"FP32": onnx_path, "U8S8 8-bit": u8s8, "reduce_range": reduced},
            inputs,
            args.rounds,
            args.iterations,
        )
        flags = emulated_cpu_flags() if qemu else {}

    lines = [
        f"### {datetime.date.today()}: {cpu_model()}, {os.cpu_count()} cores, INT8 flags "
        f"{', '.join(cpu_int8_extensions()) or 'none'}; model `{args.train_model}` "
        "(params.yaml's training on the sample)",
        "",
        "Command: `python benchmarks/int8_cpu.py"
        + (f" --train-model {args.train_model}" if args.train_model != "yolo11n.yaml" else "")
        + "`",
        "",
        f"PyTorch reference on {reference.images} val images: mAP50-95 **{reference.map50_95:.4f}** "
        f"(gate limits: fp32 {limits.fp32 * 100:.1f} pt, int8 {limits.int8 * 100:.1f} pt). "
        "No-VNNI columns: the same files "
        f"under `qemu-x86_64 -cpu {EMULATED_CPU}`"
        + (
            f" (numpy sees {', '.join(f'{k} {int(v)}' for k, v in flags.items())})"
            if flags
            else ": qemu-x86_64 not found, not measured"
        )
        + ".",
        "",
        "| artifact | mAP50-95, this CPU (VNNI) | against PyTorch, deployable "
        "| mAP50-95, AVX2 without VNNI | against PyTorch, deployable |",
        "|---|---|---|---|---|",
        *[f"| {' | '.join(cells)} |" for cells in rows],
        "",
        f"Latency on this CPU, batch 1, {args.rounds} interleaved rounds of {args.iterations} bare `session.run` calls "
        f"(median of the round p50s): FP32 {speed['FP32']:.2f} ms; U8S8 8-bit {speed['U8S8 8-bit']:.2f} ms "
        f"({speed['FP32'] / speed['U8S8 8-bit']:.2f}x FP32); reduce_range {speed['reduce_range']:.2f} ms "
        f"({speed['FP32'] / speed['reduce_range']:.2f}x FP32).",
        "",
        "The export stage itself on this machine:",
        "",
        *stage_lines,
        "",
        f"Packages: {', '.join(f'{name} {v}' for name in PACKAGES if (v := package_version(name)))}.",
        "",
    ]
    publish("\n".join(lines), RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())

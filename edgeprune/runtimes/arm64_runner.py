"""The edgeprune aarch64 runner: ``python runner.py SITE_PACKAGES JOBS_JSON INFO_JSON``.

Run by the emulated aarch64 Python (:mod:`edgeprune.runtimes.arm64` copies it beside the data
and starts it under QEMU). It uses the standard library, numpy and the runtime it runs, never
edgeprune or torch, and refuses to run anywhere but on aarch64, so nothing can silently run on
the host instead. Inputs and outputs are ``.npy`` files read and written without pickle.
"""

import json
import platform
import sys

np = None  # numpy, imported by main() from SITE_PACKAGES
ONNX_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
               "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16",
               "tensor(int32)": "int32", "tensor(int64)": "int64"}


def fail(msg):
    sys.exit(f"edgeprune arm64 runner: {msg}")


def plan(model, x, shape, dtype, dynamic_batch):
    """How many samples per invocation: the whole batch, or 1 at a time."""
    if x.dtype != dtype or tuple(x.shape[1:]) != tuple(shape[1:]):
        fail(f"{model}: inputs have shape {x.shape} dtype {x.dtype}; the artifact expects "
             f"(N, {', '.join(str(s) for s in shape[1:])}) {np.dtype(dtype)}")
    if dynamic_batch or shape[0] == len(x):
        return len(x)
    if shape[0] == 1:
        return 1
    fail(f"{model}: {len(x)} inputs do not fit the artifact's fixed batch {shape[0]}")


def run_tflite(model, x):
    from importlib.metadata import version

    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=model, num_threads=1)
    ins, outs = interp.get_input_details(), interp.get_output_details()
    if len(ins) != 1 or len(outs) != 1:
        fail(f"{model} has {len(ins)} inputs / {len(outs)} outputs; need 1 / 1")
    d = ins[0]
    sig = [int(s) for s in d.get("shape_signature", d["shape"])]
    step = plan(model, x, [int(s) for s in d["shape"]], np.dtype(d["dtype"]), sig[0] == -1)
    if sig[0] == -1:
        interp.resize_tensor_input(d["index"], [step, *x.shape[1:]])
    interp.allocate_tensors()
    ys = []
    for i in range(0, len(x), step):
        interp.set_tensor(d["index"], x[i:i + step])
        interp.invoke()
        ys.append(np.array(interp.get_tensor(outs[0]["index"])))
    return np.concatenate(ys), "ai-edge-litert", version("ai-edge-litert")


def run_onnx(model, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    ins, outs = sess.get_inputs(), sess.get_outputs()
    if len(ins) != 1 or len(outs) != 1:
        fail(f"{model} has {len(ins)} inputs / {len(outs)} outputs; need 1 / 1")
    if ins[0].type not in ONNX_DTYPES:
        fail(f"{model}: input type {ins[0].type} is not handled")
    shape = [d if isinstance(d, int) else -1 for d in ins[0].shape]
    step = plan(model, x, shape, np.dtype(ONNX_DTYPES[ins[0].type]), shape[0] == -1)
    ys = [sess.run([outs[0].name], {ins[0].name: x[i:i + step]})[0] for i in range(0, len(x), step)]
    return np.concatenate(ys), "onnxruntime", ort.__version__


def main():
    global np
    if platform.machine() != "aarch64":
        sys.exit(f"edgeprune arm64 runner: platform.machine() is {platform.machine()!r}, not "
                 "'aarch64'; refusing to run anywhere but the emulated aarch64 runtime")
    sys.path.insert(0, sys.argv[1])
    import numpy

    np = numpy
    with open(sys.argv[2]) as f:
        jobs = json.load(f)
    info = {"machine": platform.machine(), "python": platform.python_version(),
            "numpy": np.__version__, "runs": []}
    for job in jobs:
        x = np.load(job["inputs"], allow_pickle=False)
        run = run_tflite if job["model"].endswith(".tflite") else run_onnx
        y, runtime, version = run(job["model"], x)
        np.save(job["outputs"], y, allow_pickle=False)
        info["runs"].append({"model": job["model"], "runtime": runtime, "version": version,
                             "output_dtype": str(y.dtype), "output_shape": list(y.shape)})
    with open(sys.argv[3], "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    main()

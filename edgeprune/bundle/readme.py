"""The README.md of a bundle: what the model takes and gives, each artifact's parity and host
latency, and loading code for Android (Kotlin, LiteRT), iOS (Swift, CoreML) and ONNX Runtime,
filled in with the input size, normalisation and int8 parameters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def bundle_readme(mj: dict[str, Any], formats: Sequence[str]) -> str:
    inp = mj["input"]
    _, c, h, w = inp["shape_nchw"]
    mean = ", ".join(f"{v:.4f}f" for v in inp["mean"])
    std = ", ".join(f"{v:.4f}f" for v in inp["std"])
    classes = mj["output"]["class_names"]
    k = mj["output"]["shape"][0] if mj["output"]["shape"] else len(classes)
    lines = [f"# {mj['architecture']} — edgeprune bundle", "",
             f"Input: {c}x{h}x{w} RGB image, pixels scaled to [0, 1], then normalised per channel with "
             f"mean [{', '.join(f'{v:.4f}' for v in inp['mean'])}] and std "
             f"[{', '.join(f'{v:.4f}' for v in inp['std'])}]. Output: {k} logits"
             + (f" for classes {', '.join(classes)}." if classes else "."), "",
             "| file | format | runtime | input | size KiB | host parity max abs | host median ms |",
             "|---|---|---|---|---:|---:|---:|"]
    for a in mj["artifacts"]:
        i = a["io"]["input"]
        diff = a["parity"].get("max_abs")
        ms = a["host_latency"].get("median_ms")
        diff_s = f"{diff:.2e}" if diff is not None else a["parity"].get("status", "-")
        ms_s = f"{ms:.3f}" if ms is not None else "not measured"
        lines.append(f"| {a['file']} | {a['format']} | {a['runtime']} | {i.get('layout')} {i.get('dtype')} "
                     f"{i.get('shape')} | {a['size_bytes'] / 1024:.0f} | "
                     f"{diff_s} | {ms_s} |")
    lines += ["", "Latency above is on the machine that exported the bundle, not on your device; measure "
              "on the device (edgeprune targets) before you promise a frame rate.", ""]
    if any(f.startswith("tflite") for f in formats):
        tfl = "model_int8.tflite" if "tflite-int8" in formats and "tflite" not in formats else "model.tflite"
        lines += ["## Android (Kotlin, LiteRT Interpreter)", "",
                  "```kotlin",
                  "// build.gradle: implementation(\"com.google.ai.edge.litert:litert:1.+\")",
                  f"val interpreter = Interpreter(FileUtil.loadMappedFile(context, \"{tfl}\"),",
                  "    Interpreter.Options().apply { setNumThreads(4) })",
                  f"val mean = floatArrayOf({mean}); val std = floatArrayOf({std})",
                  f"val input = ByteBuffer.allocateDirect(4 * {h} * {w} * {c}).order(ByteOrder.nativeOrder())",
                  f"val bmp = Bitmap.createScaledBitmap(bitmap, {w}, {h}, true)",
                  f"for (y in 0 until {h}) for (x in 0 until {w}) {{  // NHWC, RGB",
                  "    val p = bmp.getPixel(x, y)",
                  "    val rgb = floatArrayOf(((p shr 16) and 255) / 255f, ((p shr 8) and 255) / 255f, (p and 255) / 255f)",
                  f"    for (ch in 0 until {c}) input.putFloat((rgb[ch] - mean[ch]) / std[ch])",
                  "}",
                  f"val logits = Array(1) {{ FloatArray({k}) }}",
                  "interpreter.run(input.rewind(), logits)",
                  "```", ""]
        if "tflite-int8" in formats:
            q = next(a for a in mj["artifacts"] if a["format"] == "tflite-int8")["io"]
            qi, qo = q["input"]["quantization"], q["output"]["quantization"]
            lines += [f"`model_int8.tflite` takes int8 input: q = round(x / {qi['scale']:.6g}) + "
                      f"({qi['zero_point']}), clamped to [-128, 127], after the normalisation above; its "
                      f"int8 output is logits = {qo['scale']:.6g} * (q - ({qo['zero_point']})); "
                      f"{qo.get('range_note', 'its range covers the calibration logits')}.", ""]
    if "coreml" in formats:
        lines += ["## iOS (Swift, CoreML)", "",
                  "```swift",
                  "let model = try MLModel(contentsOf: Bundle.main.url(forResource: \"model\", withExtension: \"mlmodelc\")!)",
                  f"let input = try MLMultiArray(shape: [1, {c}, {h}, {w}], dataType: .float32)  // NCHW",
                  f"let mean: [Float] = [{mean.replace('f', '')}], std: [Float] = [{std.replace('f', '')}]",
                  "// for each channel ch, row y, column x: input[[0, ch, y, x]] = (pixel[ch] / 255 - mean[ch]) / std[ch]",
                  "let out = try model.prediction(from: MLDictionaryFeatureProvider(dictionary: [\"input\": input]))",
                  "let logits = out.featureValue(for: \"logits\")!.multiArrayValue!",
                  "```", "",
                  "Xcode compiles `model.mlpackage` into `model.mlmodelc` when you add it to the app target.", ""]
    if "onnx" in formats:
        lines += ["## ONNX Runtime", "", "`model.onnx` takes NCHW float32 input named as in model.json "
                  "(opset 18).", ""]
    return "\n".join(lines)

"""The ONNX interface the service relies on, written once: ``export/`` writes it, ``serving/`` checks it.

A served model file has

- one input ``image``: uint8 RGB images, [batch, 32, 32, 3] (channels last, as Pillow decodes
  them), with a dynamic batch dimension; normalization happens inside the graph;
- two outputs, ``logits`` and ``probabilities``: float32, [batch, classes];
- string metadata (``metadata_props``) under the keys of ``MetadataKey``, of which the service
  needs only ``classes``; the others describe the file (see ``export.metadata``).

Only names and plain values live here (no numpy, onnx or torch), so both sides can import it.
"""

INPUT_NAME = "image"
INPUT_DTYPE = "uint8"
IMAGE_SHAPE = (32, 32, 3)  # one image: height, width, RGB channels
BATCH_DIM = "batch"  # the name of the dynamic first dimension of every input and output

LOGITS = "logits"
PROBABILITIES = "probabilities"
OUTPUTS = (LOGITS, PROBABILITIES)  # in the graph's order
OUTPUT_DTYPE = "float32"
NUM_CLASSES = 10  # what this project exports; the service takes the count from the ``classes`` metadata

# onnxruntime's names for those dtypes (``NodeArg.type``), which both sides compare against.
INPUT_ORT_TYPE = "tensor(uint8)"
OUTPUT_ORT_TYPE = "tensor(float)"

INPUT_FORMAT = "uint8 RGB, [batch, 32, 32, 3] (channels last, as decoded by Pillow); normalization is in the graph"
NO_TTA = "none"  # the ``tta`` value of a graph without test-time augmentation (the key is then absent)


class MetadataKey:
    """The keys of an exported file's ``metadata_props``; every value is a string, as ONNX requires."""

    CLASSES = "classes"  # JSON list of class names, in the outputs' column order
    ARCH = "arch"  # the registered architecture (training.models)
    SOURCE_CHECKPOINT_SHA256 = "source_checkpoint_sha256"
    TEST_ACCURACY = "test_accuracy"  # decimal fraction, "" if unknown
    OPSET = "opset"
    PARITY = "parity"  # JSON report: PyTorch vs onnxruntime on the test images
    MEAN = "mean"  # JSON list, [0, 1] units, RGB
    STD = "std"
    EPOCHS = "epochs"  # epochs trained
    INPUT_FORMAT = "input_format"  # INPUT_FORMAT, for a person reading the file
    EXPORTED_AT = "exported_at"
    TORCH_VERSION = "torch_version"
    TTA = "tta"  # only in a graph with test-time augmentation inside: "flip" or "flip_translate"
    QUANTIZATION = "quantization"  # only in int8 files: JSON figures against the fp32 model


JSON_METADATA_KEYS = (MetadataKey.CLASSES, MetadataKey.PARITY, MetadataKey.MEAN, MetadataKey.STD,
                      MetadataKey.QUANTIZATION)


# int8: ``NAME.int8.onnx`` beside ``NAME.onnx`` is its statically quantized copy (export.quantize), with
# figures against the fp32 file in its ``quantization`` metadata. The service serves it as NAME (and the
# fp32 file as NAME-fp32) when it loses at most INT8_MAX_DROP_POINTS accuracy points on the test images and
# classifies one image at a time faster; else NAME stays fp32 and the int8 file is NAME-int8.
INT8_SUFFIX = ".int8"
INT8_MAX_DROP_POINTS = 0.3


# The largest image (width x height) decoded: the service's MAX_IMAGE_PIXELS default and training's limit for
# class-folder data sets (common.images). Here, not in common.images, so that the gunicorn master can read
# its settings' defaults without loading Pillow and numpy.
MAX_IMAGE_PIXELS = 64_000_000

# How every speed figure of the manifest is measured, by export.package and export.quantize alike: the first
# THROUGHPUT_IMAGES test images (cycled where there are fewer), batched in THROUGHPUT_BATCH on every core, or
# one image per call on one onnxruntime thread (how the service answers a lone request).
THROUGHPUT_IMAGES = 2048
THROUGHPUT_BATCH = 64


# The default model (what most users ever see), chosen by export.package: the most accurate served file that
# answers at least DEFAULT_MIN_SINGLE_IMAGES_PER_S lone requests a second on one onnxruntime thread and whose
# worst content-preserving upload variant (benchmarks/upload_robustness.py) loses at most
# DEFAULT_MAX_UPLOAD_DROP_POINTS against the native upload.
DEFAULT_MIN_SINGLE_IMAGES_PER_S = 1000.0
DEFAULT_MAX_UPLOAD_DROP_POINTS = 1.0


def int8_preferred(quantization: object) -> bool:
    """Whether an int8 file's ``quantization`` figures (decoded JSON) earn it the model's own name."""
    if not isinstance(quantization, dict):
        return False
    drop, speedup = quantization.get("accuracy_drop_points"), quantization.get("single_image_speedup")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (drop, speedup))
    return numbers and drop <= INT8_MAX_DROP_POINTS and speedup > 1.0

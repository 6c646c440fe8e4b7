"""What one hostile or worst-case upload costs to decode: peak RSS and time, each in a fresh process.

    python benchmarks/image_cost.py [--before REF] [--only NAME ...] [--max-pixels 64000000]

1. Builds worst-case files for every accepted format at the limits (MAX_IMAGE_PIXELS, the 10 MiB
   upload, ``common.images.MAX_DECODE_BYTES``): the largest images each format may decode, the same
   formats just beyond the memory cap, and the hostile files that were found against the service (an
   ICO holding a 169-megapixel PNG, a 62 KiB palette PNG of 64 megapixels, a TIFF of 2.4 million
   strips, a progressive JPEG, WebP, run-length BMP, plain-text PGM). Flat content keeps every file
   under the upload limit; memory does not depend on content, time somewhat does.
2. Decodes each with ``common.images.decode`` in a fresh subprocess and records the decode's wall
   time and its peak RSS increase: VmHWM (reset through /proc/self/clear_refs just before) minus the
   RSS before, so the figure is what the decode adds to a worker; and, from the module, the estimate
   it checked against the cap. With ``--before REF`` the same files are decoded by
   ``common/images.py`` (``serving/uploads.py`` before it moved) as of that git revision too.
3. Writes ``benchmarks/results/image_cost.json``. Memory is the primary figure: times are wall
   clock on a shared machine.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the hostile files are built by the tests' own builders

from hostile_images import (  # noqa: E402
    bmp_rle8,
    handmade_png,
    icon_holding,
    png_with_text_bomb,
    tiff_of_one_row_strips,
    transparent_palette,
)

from common.machine import usable_cpus  # noqa: E402

MIB = 1024 * 1024
UPLOAD_LIMIT = 10 * MIB  # MAX_UPLOAD_MB's default: a larger file never reaches the decoder


# --- the files ----------------------------------------------------------------------------------

def gradient(width: int, height: int, mode: str = "RGB"):
    """Smooth content: compresses well in lossy formats, unlike zeros it exercises their decoders."""
    from PIL import Image
    ramp = Image.linear_gradient("L").resize((width, height))
    if mode == "L":
        return ramp
    rgb = Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT), ramp))
    return rgb.convert(mode) if mode != "RGB" else rgb


def encoded(img, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def side_for(bytes_per_pixel: float, cap: int) -> int:
    """The side of the largest square whose estimated decoding memory fits the cap."""
    return int((cap / bytes_per_pixel) ** 0.5) // 8 * 8


def cases(max_pixels: int, cap: int) -> list[tuple[str, str, Callable[[], bytes]]]:
    from PIL import Image
    limit = int(max_pixels ** 0.5)  # the square at MAX_IMAGE_PIXELS
    rgb_max, webp_max, avif_max = side_for(4, cap), side_for(16, cap), side_for(14, cap)
    prog420_max, prog444_max = side_for(3 + 0.1, cap), side_for(6 + 0.1, cap)
    return [
        ("jpeg_baseline_limit", f"baseline JPEG {limit}x{limit}, 4:2:0 (decoded at 1/8)",
         lambda: encoded(gradient(limit, limit), "JPEG", quality=50)),
        ("jpeg_thin_no_scaling", "baseline JPEG 250x65500 (too thin for DCT scaling)",
         lambda: encoded(gradient(250, 65500), "JPEG", quality=50)),
        ("jpeg_progressive_420_limit", f"progressive JPEG {limit}x{limit}, 4:2:0",
         lambda: encoded(gradient(limit, limit), "JPEG", quality=50, progressive=True)),
        ("jpeg_progressive_420_max", f"progressive JPEG {prog420_max}x{prog420_max}, 4:2:0: the largest accepted",
         lambda: encoded(gradient(prog420_max, prog420_max), "JPEG", quality=50, progressive=True)),
        ("jpeg_progressive_444_limit", f"progressive JPEG {limit}x{limit}, 4:4:4",
         lambda: encoded(gradient(limit, limit), "JPEG", quality=50, progressive=True, subsampling=0)),
        ("jpeg_progressive_444_max", f"progressive JPEG {prog444_max}x{prog444_max}, 4:4:4: the largest accepted",
         lambda: encoded(gradient(prog444_max, prog444_max), "JPEG", quality=50, progressive=True, subsampling=0)),
        ("png_rgb_limit", f"RGB PNG {limit}x{limit}", lambda: handmade_png(limit, limit, 2)),
        ("png_rgb_max", f"RGB PNG {rgb_max}x{rgb_max}: the largest accepted",
         lambda: handmade_png(rgb_max, rgb_max, 2)),
        ("png_rgba_limit", f"RGBA PNG {limit}x{limit}", lambda: handmade_png(limit, limit, 6)),
        ("png_rgba_max", f"RGBA PNG {rgb_max}x{rgb_max}: the largest accepted",
         lambda: handmade_png(rgb_max, rgb_max, 6)),
        ("png_rgb16_max", f"16-bit RGB PNG {rgb_max}x{rgb_max} (stored as 8-bit RGB)",
         lambda: handmade_png(rgb_max, rgb_max, 2, depth=16)),
        ("png_palette_limit", f"palette PNG {limit}x{limit} with a transparent entry (the 62 KiB report)",
         lambda: handmade_png(limit, limit, 3, extra_chunks=transparent_palette())),
        ("png_gray_limit", f"8-bit gray PNG {limit}x{limit}", lambda: handmade_png(limit, limit, 0)),
        ("png_gray16_limit", f"16-bit gray PNG {limit}x{limit}", lambda: handmade_png(limit, limit, 0, depth=16)),
        ("png_bilevel_limit", f"1-bit PNG {limit}x{limit}", lambda: handmade_png(limit, limit, 0, depth=1)),
        ("png_text_bomb", "32x32 PNG with 64 zTXt chunks of 1 MB each", png_with_text_bomb),
        ("gif_limit", f"GIF {limit}x{limit}", lambda: encoded(Image.new("P", (limit, limit)), "GIF")),
        ("webp_limit", f"lossy WebP {limit}x{limit}",
         lambda: encoded(gradient(limit, limit), "WEBP", quality=50, method=0)),
        ("webp_max", f"lossy WebP {webp_max}x{webp_max}: the largest accepted",
         lambda: encoded(gradient(webp_max, webp_max), "WEBP", quality=50, method=0)),
        ("webp_lossless_max", f"lossless WebP RGBA {webp_max}x{webp_max}: the largest accepted",
         lambda: encoded(gradient(webp_max, webp_max, "RGBA"), "WEBP", lossless=True, method=0)),
        ("avif_rgb_4000", "AVIF 4000x4000, 4:2:0", lambda: encoded(gradient(4000, 4000), "AVIF", quality=30, speed=10)),
        ("avif_rgb_max", f"AVIF {avif_max}x{avif_max}, 4:4:4: the largest accepted",
         lambda: encoded(gradient(avif_max, avif_max), "AVIF", quality=30, speed=10, subsampling="4:4:4")),
        ("tiff_rgb_lzw_max", f"LZW RGB TIFF {rgb_max - 64}x{rgb_max - 64} in Pillow's 64 KiB strips",
         lambda: encoded(gradient(rgb_max - 64, rgb_max - 64), "TIFF", compression="tiff_lzw")),
        ("tiff_rgb_one_strip", "LZW RGB TIFF 4000x4000 in one strip",
         lambda: encoded(gradient(4000, 4000), "TIFF", compression="tiff_lzw", tiffinfo={278: 4000})),
        ("tiff_gray16_limit", f"deflate 16-bit gray TIFF {limit}x{limit}",
         lambda: encoded(Image.new("I;16", (limit, limit)), "TIFF", compression="tiff_adobe_deflate")),
        ("tiff_many_strips", "uncompressed gray TIFF 20x2,400,000, one strip per row (9 MiB)",
         lambda: tiff_of_one_row_strips(20, 2_400_000)),
        ("bmp_bilevel_limit", f"1-bit BMP {limit}x{limit}", lambda: encoded(Image.new("1", (limit, limit)), "BMP")),
        ("bmp_rgb_upload_limit", "24-bit BMP 1800x1800 (the largest under 10 MiB)",
         lambda: encoded(gradient(1800, 1800), "BMP")),
        ("bmp_rle8_limit", f"run-length 8-bit BMP {limit}x{limit}", lambda: bmp_rle8(limit, limit, 250)),
        ("pbm_limit", f"binary PBM {limit}x{limit}", lambda: encoded(Image.new("1", (limit, limit)), "PPM")),
        ("pgm_plain_text", "plain-text PGM 2500x2000 (10 MB of '0 ')",
         lambda: b"P2\n2500 2000\n255\n" + b"0 " * 5_000_000),
        ("ico_png_169mp", "ICO holding a 13000x13000 PNG (the report)",
         lambda: icon_holding(handmade_png(13_000, 13_000, 2))),
    ]


# --- one measurement, in a fresh process --------------------------------------------------------

def status_mib(key: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def estimate(images, data: bytes, max_pixels: int) -> dict:
    """The header and the module's own estimate of the decode, through its header-only open (a module
    without one gets none: opening some of these files with plain Pillow decodes or allocates a lot)."""
    if not hasattr(images, "decode_cost"):
        return {}
    try:
        img = images.open_image(data, max_pixels)
    except images.ImageError:
        return {}
    with img:
        header = {"format": img.format, "size": list(img.size), "mode": img.mode}
        try:
            images.refuse_python_decoders(img)
        except images.ImageError:
            return header
        full_size = img.size
        images.scale_jpeg_while_decoding(img, images.SIZE)
        cost = images.decode_cost(img, data, full_size)
        return {**header, "decoded_pixels": cost.pixels, "estimate_mib": round(cost.bytes / MIB, 1)}


def measure(module: Path, file: Path, max_pixels: int) -> dict:
    import importlib.util
    spec = importlib.util.spec_from_file_location("images_under_test", module)
    images = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(images)
    data = file.read_bytes()
    result = estimate(images, data, max_pixels)
    gc.collect()
    rss_before = status_mib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # VmHWM := VmRSS
    except OSError:
        pass
    start = time.perf_counter()
    try:
        images.decode(data, max_pixels)
        result["outcome"] = "decoded"
    except images.ImageError as exc:
        result["outcome"] = f"{exc.status}: {exc}"
    result["seconds"] = round(time.perf_counter() - start, 3)
    result["peak_rss_increase_mib"] = round(status_mib("VmHWM") - rss_before, 1)
    result["process_rss_mib"] = round(rss_before, 1)
    return result


def run_one(module: Path, file: Path, max_pixels: int) -> dict:
    command = [sys.executable, __file__, "--measure", str(file), "--module", str(module),
               "--max-pixels", str(max_pixels)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        return {"outcome": f"process failed ({done.returncode}): {done.stderr.strip()[-300:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def commit_of(ref: str) -> str:
    return subprocess.run(["git", "rev-parse", "--short", ref], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def module_at(ref: str, folder: Path) -> Path:
    path = folder / f"images_{commit_of(ref)}.py"
    # serving/uploads.py was serving/images.py before the rename
    for name in ("common/images.py", "serving/uploads.py", "serving/images.py"):
        shown = subprocess.run(["git", "show", f"{ref}:{name}"], cwd=ROOT, capture_output=True)
        if shown.returncode == 0:
            path.write_bytes(shown.stdout)
            return path
    raise SystemExit(f"image_cost: {ref} has no common/images.py, serving/uploads.py or serving/images.py")
    return path


def worst_decoded(results: list[dict], key: str) -> dict:
    decoded = [r for r in results if r[key].get("outcome") == "decoded"]
    worst = max(decoded, key=lambda r: r[key]["peak_rss_increase_mib"], default=None)
    return {"case": worst["name"], "peak_rss_increase_mib": worst[key]["peak_rss_increase_mib"]} if worst else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-pixels", type=int, default=64_000_000, help="MAX_IMAGE_PIXELS")
    parser.add_argument("--before", help="also decode with the decoder of this git revision")
    parser.add_argument("--only", nargs="*", help="case names to run (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "image_cost.json")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--module", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.module, args.measure, args.max_pixels)))
        return

    import PIL

    from common import images
    results = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        before = module_at(args.before, folder) if args.before else None
        for name, what, build in cases(args.max_pixels, images.MAX_DECODE_BYTES):
            if args.only and name not in args.only:
                continue
            data = build()
            file = folder / name
            file.write_bytes(data)
            row = {"name": name, "what": what, "file_bytes": len(data),
                   "over_upload_limit": len(data) > UPLOAD_LIMIT,
                   "after": run_one(ROOT / "common" / "images.py", file, args.max_pixels)}
            if before:
                row["before"] = run_one(before, file, args.max_pixels)
            file.unlink()
            results.append(row)
            print(json.dumps(row), flush=True)

    report = {
        "benchmark": "image_cost",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python benchmarks/image_cost.py " + " ".join(sys.argv[1:]),
        "machine": {"usable_cpus": usable_cpus(), "platform": platform.platform(),
                    "python": platform.python_version(), "pillow": PIL.__version__,
                    "note": "shared machine (trainings running): times are noisy; memory is the figure"},
        "max_image_pixels": args.max_pixels,
        "max_decode_mib": images.MAX_DECODE_BYTES / MIB,
        "upload_limit_mib": UPLOAD_LIMIT / MIB,
        "worst_decoded_after": worst_decoded(results, "after"),
        **({"before_revision": commit_of(args.before), "worst_decoded_before": worst_decoded(results, "before")}
           if args.before else {}),
        "cases": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

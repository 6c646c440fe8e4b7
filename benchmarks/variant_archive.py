"""CIFAR-10 as one upload variant delivers it: a data archive to train and test on, for a variant's floor.

    python benchmarks/variant_archive.py VARIANT --out FILE [--data PATH]

Every image of both splits of a train/<class>/ + test/<class>/ archive is written as the file
``benchmarks/upload_robustness.py`` uploads for VARIANT (the same pixels, encoder and settings, so the same
bytes), under its own name with the format's extension. ``python -m training.run --data FILE`` decodes them
with the service's decode, as it does any archive, so a model trained on FILE has seen in training exactly the
damage it is tested on. Its test accuracy is what the variant leaves of the recipe's accuracy once nothing about
the damage is unseen: the floor under the robustness benchmark's figure for that variant, which splits a clean
model's drop into what training can win back and what the variant has taken out of the pictures.

    python benchmarks/variant_archive.py x1-jpeg-q50 --out ~/cifar-runs/cifar10-x1-jpeg-q50.tar.gz
    python -m training.run --model whitened_vgg_fast --val-size 0 --data ~/cifar-runs/cifar10-x1-jpeg-q50.tar.gz

``--list-variants`` of the robustness benchmark prints the names. The archive is written atomically.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import sys
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.upload_robustness import (  # noqa: E402
    DEFAULT_DATA,
    VARIANTS,
    UsageError,
    Variant,
    available,
    make_upload,
    upright_rgb,
)
from common.files import atomic_write  # noqa: E402
from common.text import first_line  # noqa: E402

PROG = "variant_archive"
SPLITS = ("train", "test")
EXTENSION = {"jpeg": ".jpg", "tiff": ".tif"}  # else "." + the variant's format


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise UsageError(message)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = _Parser(prog=f"python benchmarks/{PROG}.py", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", help="an upload variant's name, e.g. x1-jpeg-q50")
    parser.add_argument("--out", type=Path, required=True, help="the archive to write (.tar.gz)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CIFAR10_DATA") or DEFAULT_DATA),
                        help="train/<class>/ + test/<class>/ tar(.gz) (default: $CIFAR10_DATA, else %(default)s)")
    return parser.parse_args(argv)


def variant_named(name: str) -> Variant:
    for v in VARIANTS:
        if v.name == name:
            if not available(v):
                raise UsageError(f"{name}: this Pillow cannot write {v.fmt}")
            return v
    raise UsageError(f"no upload variant is named {name!r} "
                     "(python benchmarks/upload_robustness.py --list-variants prints them)")


def member_name(name: str, v: Variant) -> str:
    path = PurePosixPath(name)
    return str(path) if v.native else str(path.with_suffix(EXTENSION.get(v.fmt, f".{v.fmt}")))


def write_archive(source: Path, v: Variant, out: Path) -> dict[str, int]:
    """Write ``out``: every train/ and test/ image of ``source`` as ``v`` uploads it. Returns images per split."""
    if not source.is_file() or not tarfile.is_tarfile(source):
        raise UsageError(f"--data must be a .tar or .tar.gz of train/<class>/ and test/<class>/ images: {source}")
    counts = dict.fromkeys(SPLITS, 0)

    def write(f) -> None:
        try:
            copy(f)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:  # the source, not out
            raise UsageError(f"cannot read {source}: {first_line(exc)}") from None
        missing = [s for s in SPLITS if not counts[s]]
        if missing:  # raised before out is replaced: an archive already there stays
            raise UsageError(f"{source}: no {' or '.join(missing)}/<class>/ images")

    def copy(f) -> None:
        with tarfile.open(source, "r|*") as tar_in, tarfile.open(fileobj=f, mode="w:gz") as tar_out:
            for member in tar_in:
                parts = PurePosixPath(member.name).parts
                if not (member.isfile() and len(parts) >= 3 and parts[-3] in SPLITS
                        and not parts[-1].startswith(".")):
                    continue
                original = tar_in.extractfile(member).read()
                data = make_upload(upright_rgb(original), v, original)
                info = tarfile.TarInfo(member_name(member.name, v))
                info.size, info.mtime = len(data), member.mtime
                tar_out.addfile(info, io.BytesIO(data))
                counts[parts[-3]] += 1

    atomic_write(out, write)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
        v = variant_named(args.variant)
        counts = write_archive(args.data, v, args.out)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{PROG}: error: {first_line(exc)}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {counts['train']:,} train and {counts['test']:,} test images as {v.name} "
          f"({v.description})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Raw uint8 shards against resized-JPEG shards, on this machine: prepare time, bytes, and the time of a linear
probe and of a full fine-tune reading each (docs/performance.md, "Shard formats").

    python scripts/shard_formats.py --root ../shared/data/pbc_blood_cells --img-size 224

Each format is prepared into a fresh cache folder in this process (one decode thread per core); each trial
runs in this process on that cache (efficientnet_lite0, bundled ImageNet weights, similarity off). Prints a
markdown table and the top-1 of each trial (JPEG is lossy: its numbers are close to, not equal to, raw's).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bench import training
from bench.config import TrialConfig
from bench.data import prepare_dataset
from bench.data.shards import FORMATS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="an image folder (class folders)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the trials")
    parser.add_argument("--probe-steps", type=int, default=20)
    parser.add_argument("--full-steps", type=int, default=6)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    name = f"imagefolder:{Path(args.root).resolve()}"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-formats-") as scratch:
        for fmt in FORMATS:
            cache = Path(scratch) / fmt
            tic = time.perf_counter()
            data = prepare_dataset(name, args.img_size, cache_dir=cache, shard_format=fmt)
            prepare = time.perf_counter() - tic
            shards = [s for split in ("train", "test") for s in data.meta["shards"][split]]
            row = {
                "format": fmt,
                "images": len(data.y_train) + len(data.y_test),
                "prepare_s": prepare,
                "bytes": sum(s["nbytes"] for s in shards),
            }
            for label, freeze, steps in (
                ("probe", "linear_probe", args.probe_steps),
                ("full", "full", args.full_steps),
            ):
                config = TrialConfig(
                    backbone="efficientnet_lite0",
                    dataset=name,
                    img_size=args.img_size,
                    steps=steps,
                    batch_size=32,
                    lr=1e-3,
                    freeze=freeze,
                    cache_dir=str(cache),
                    similarity=False,
                    shard_format=fmt,
                )
                tic = time.perf_counter()
                result = training.run_trial(config, data=data)
                row[f"{label}_s"] = time.perf_counter() - tic
                row[f"{label}_top1"] = result.row["metric_top1"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{rows[0]['images']} images at {args.img_size} px, {torch.get_num_threads()} torch threads\n")
    print(
        "| format | prepare s | images/s | MB | MB/image | probe trial s | full FT trial s | probe top-1 | full top-1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['format']} | {row['prepare_s']:.1f} | {row['images'] / row['prepare_s']:.0f} | "
            f"{row['bytes'] / 1e6:.0f} | {row['bytes'] / row['images'] / 1e6:.3f} | {row['probe_s']:.1f} | "
            f"{row['full_s']:.1f} | {row['probe_top1']:.1f} | {row['full_top1']:.1f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

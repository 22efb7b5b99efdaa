"""Ingestion throughput and peak memory on a large generated GeoTIFF, against plain rasterio reads.

Writes a scene of ``--size`` × ``--size`` pixels × 3 bands (uint8, internally tiled, uncompressed;
the default 18500² is just over 1 GB) and its label raster, then measures in separate processes
(so that each peak memory belongs to one case):

* ``read whole``: ``rasterio.open(scene).read()``, the whole image at once;
* ``read windows``: a plain rasterio read of every image tile window;
* ``read image + label windows``: the same with the label raster, the least any tiler must read;
* ``ingest (<codec>)``: tisynth's ingest (validate + plan, then read, convert and write every
  image and mask tile as GeoTIFF/PNG) with the given tile codec.

    python benchmarks/bench_ingest.py [--size 18500] [--tile 512] [--workers 2] [--codecs none deflate]

Throughput is scene megabytes (image bytes) per second. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_scene(folder: Path, size: int, block: int = 512) -> Path:
    """A scene built from shifted copies of procedural land cover, written strip by strip."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from tisynth.classes import ClassRegistry
    from tisynth.ingest.demo_scenes import DEMO_CLASSES, DemoSceneConfig
    from tisynth.ingest.demo_scenes import make_scene as demo

    registry = ClassRegistry.from_records(DEMO_CLASSES)
    patches = [demo(DemoSceneConfig(size=block, seed=s, nodata_strip=0), 0, registry) for s in range(4)]
    (folder / "scenes").mkdir(parents=True)
    (folder / "labels").mkdir()
    profile = {"driver": "GTiff", "width": size, "height": size, "dtype": "uint8", "crs": "EPSG:32650",
               "transform": from_origin(500000, 4400000, 1.0, 1.0), "tiled": True, "blockxsize": block,
               "blockysize": block}
    rng = np.random.default_rng(0)
    with rasterio.open(folder / "scenes" / "big.tif", "w", count=3, **profile) as img, \
            rasterio.open(folder / "labels" / "big.tif", "w", count=1, compress="deflate", **profile) as lab:
        for r in range(0, size, block):
            h = min(block, size - r)
            row_img = np.zeros((3, h, size), np.uint8)
            row_lab = np.zeros((1, h, size), np.uint8)
            for c in range(0, size, block):
                w = min(block, size - c)
                image, label = patches[int(rng.integers(len(patches)))]
                row_img[:, :, c : c + w] = np.moveaxis(image[:h, :w], -1, 0)
                row_lab[0, :, c : c + w] = label[:h, :w]
            img.write(row_img, window=Window(0, r, size, h))
            lab.write(row_lab, window=Window(0, r, size, h))
    (folder / "classes.csv").write_text("id,name,r,g,b\n" + "".join(
        f"{c['id']},{c['name']},{c['color'][0]},{c['color'][1]},{c['color'][2]}\n" for c in DEMO_CLASSES))
    return folder / "scenes" / "big.tif"


def case(kind: str, folder: str, tile: int, workers: int, codec: str) -> dict:
    """Runs in a child process; returns seconds and peak RSS (MiB)."""
    import rasterio

    sys.path.insert(0, str(ROOT / "src"))
    scene = Path(folder) / "scenes" / "big.tif"
    start = time.perf_counter()
    if kind == "read whole":
        with rasterio.open(scene) as src:
            data = src.read()
        checksum = int(data[:, ::997, ::997].sum())
    elif kind == "read windows":
        from tisynth.ingest.rasters import tile_windows

        checksum = 0
        with rasterio.open(scene) as src:
            for w in tile_windows(src.height, src.width, tile, None, "shift"):
                checksum += int(src.read(window=w.to_rasterio())[:, 0, 0].sum())
    elif kind == "read image + label windows":
        from tisynth.ingest.rasters import tile_windows

        checksum = 0
        with rasterio.open(scene) as src, rasterio.open(Path(folder) / "labels" / "big.tif") as lab:
            for w in tile_windows(src.height, src.width, tile, None, "shift"):
                checksum += int(src.read(window=w.to_rasterio())[:, 0, 0].sum())
                checksum += int(lab.read(1, window=w.to_rasterio())[0, 0])
    else:
        from tisynth import ingest

        out = Path(folder) / f"tiles_{codec}"
        dcfg = ingest.DatasetConfig.from_params({"root": folder, "images": "scenes", "masks": "labels"})
        icfg = ingest.IngestConfig.from_params({"tile_size": tile, "workers": workers, "compress": codec})
        registry = ingest.load_registry(dcfg)
        plan, _ = ingest.plan_tiles(registry, dcfg, icfg)
        manifest = ingest.manifest_from_plan(plan, registry, icfg)
        ingest.write_tiles(manifest, registry, dcfg, icfg, out)
        checksum = len(manifest)
        shutil.rmtree(out)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mib": peak, "checksum": checksum}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=18500)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--codecs", nargs="+", default=["none", "deflate"])
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, folder, tile, workers, codec = args.child
        print(json.dumps(case(kind, folder, int(tile), int(workers), codec)))
        return 0
    sys.path.insert(0, str(ROOT / "src"))
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        t0 = time.perf_counter()
        scene = make_scene(Path(tmp), args.size)
        mb = args.size * args.size * 3 / 1e6
        print(f"scene: {args.size}x{args.size}x3 uint8 = {mb:.0f} MB ({scene.stat().st_size / 1e6:.0f} MB on disk), "
              f"made in {time.perf_counter() - t0:.0f} s; tiles {args.tile}², {args.workers} writer threads")
        kinds = [("read whole", "-"), ("read windows", "-"), ("read image + label windows", "-")]
        kinds += [("ingest", c) for c in args.codecs]
        rows = []
        for kind, codec in kinds:
            subprocess.run(["sync"], check=False)
            out = subprocess.run([sys.executable, __file__, "--child", kind, tmp, str(args.tile), str(args.workers),
                                  codec], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((kind if codec == "-" else f"{kind} ({codec})", r["seconds"], mb / r["seconds"], r["peak_mib"]))
        image_only, both = rows[1][2], rows[2][2]
        print("\n| case | seconds | MB/s | vs image windows | vs image + label windows | peak RSS (MiB) |\n"
              "|---|---|---|---|---|---|")
        for name, sec, rate, peak in rows:
            print(f"| {name} | {sec:.1f} | {rate:.0f} | {100 * rate / image_only:.0f} % | {100 * rate / both:.0f} % "
                  f"| {peak:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

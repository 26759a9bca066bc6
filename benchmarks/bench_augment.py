"""The data pipeline alone: augmented images per second, no model.

cifarlab's training loader as the engine uses it: the split lives on the device padded and normalised once, and
each batch is one ``randint`` (a crop offset + flip combination per image), one table lookup plus the images'
base offsets, one ``index_select`` (crop, flip and normalisation in one gather), the labels' gather and, if
asked, cutout (one ``randint``, one mask lookup, one multiply), drawn from the loader's (seed, epoch) generator.
Timed over whole epochs, device synchronised before and after.

    python -m benchmarks.bench_augment               # GPU: batch 512 and 2048, without and with cutout 16
    python -m benchmarks.bench_augment --quick       # CPU smoke
"""

from __future__ import annotations

import argparse

import torch

from cifarlab.data import BatchAugment, DeviceLoader

from .common import RESULTS, Timer, csv_ints, header, pick_device, save, train_split


def measure(split, mean, std, device, batch: int, cutout: int, epochs: int, warmup_epochs: int) -> dict:
    aug = BatchAugment(mean, std, crop_padding=4, hflip=True, cutout_size=cutout, device=device)
    loader = DeviceLoader(split, batch, mean, std, device, train=True, augment=aug, seed=0)

    def run(epoch: int) -> int:
        loader.set_epoch(epoch)
        images = 0
        for _, y in loader:  # eager kernels run whether or not the batch is used
            images += len(y)
        return images

    for e in range(warmup_epochs):
        run(e)
    images, seconds = 0, []
    for e in range(warmup_epochs, warmup_epochs + epochs):
        with Timer(device) as t:
            images += run(e)
        seconds.append(t.seconds)
    ips = images / sum(seconds)
    return {"batch_size": batch, "cutout": cutout, "images_per_second": round(ips, 1),
            "microseconds_per_batch": round(1e6 * sum(seconds) / (images // batch), 2),
            "epoch_seconds": [round(s, 5) for s in seconds], "timed_epochs": epochs, "timed_images": images,
            "timed_batches": images // batch, "warmup_epochs": warmup_epochs,
            "pipeline": "DeviceLoader: crop/flip/normalise as one gather from the prepared split"
                        + (" + cutout" if cutout else "")}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default=None, help="batch sizes, comma-separated (default 512,2048; --quick 64,256)")
    p.add_argument("--cutouts", default="0,16", help="cutout sizes to measure, comma-separated (0: none)")
    p.add_argument("--epochs", type=int, default=None, help="timed epochs per configuration (default 20; --quick 2)")
    p.add_argument("--warmup-epochs", type=int, default=2)
    p.add_argument("--images", type=int, default=None, help="random images (default 50000; --quick 2048)")
    p.add_argument("--data", default=None, help="a real CIFAR-100 source instead of random images (needs `datasets`)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="a CPU smoke run")
    p.add_argument("--out", default=str(RESULTS), help="folder for the JSON record")
    p.add_argument("--no-save", action="store_true", help="print only")
    args = p.parse_args(argv)
    q = args.quick
    args.batches = csv_ints(args.batches or ("64,256" if q else "512,2048"))
    args.cutouts = csv_ints(args.cutouts)
    args.epochs = args.epochs or (2 if q else 20)
    args.images = args.images or (2048 if q else 50_000)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    split, mean, std, data_desc = train_split(args.data, args.images)
    record = header("augment", device, args.quick, data_desc, {k: v for k, v in vars(args).items() if k != "out"})
    print(f"{record['device']} | torch {torch.__version__} (CUDA {torch.version.cuda}) | {data_desc}"
          f"{' | QUICK smoke run' if args.quick else ''}")
    results = []
    for batch in args.batches:
        for cutout in args.cutouts:
            r = measure(split, mean, std, device, batch, cutout, args.epochs, args.warmup_epochs)
            results.append(r)
            print(f"batch {batch:>5} cutout {cutout:>2}: {r['images_per_second']:>13,.0f} augmented images/s "
                  f"({r['microseconds_per_batch']:.1f} us/batch, {r['timed_batches']} batches timed)", flush=True)
    record["results"] = results
    if not args.no_save:
        print(f"wrote {save(record, 'augment', args.out, device)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

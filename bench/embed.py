"""Embedding paths (decode + preprocess + model) against the bare model forward, same run.

    python bench/embed.py --n 64 --batch-size 32   # CPU smoke: offline EfficientNet-Lite0
    python bench/embed.py --device cuda            # GPU: ViT-B/16 random weights, bf16, 4096 imgs

The images are the shared CIFAR-10 test JPEGs (../shared/data/cifar10/test.parquet, cycled when
--n exceeds 10,000), else synthetic JPEGs. Modes, all on the same images in the same process:

* bare:    the model's forward on pre-made normalised tensors, one call per batch (bf16
           autocast on CUDA), the reference every ratio is taken against (images/s of the mode
           / images/s of bare); on CPU the embedder itself calls the model on chunks of
           deepclust.embedder.CPU_CHUNK rows, and a parity line compares the two;
* serial:  what one Ray Data embedding actor runs after a decode task, but in one process:
           deepclust.preprocess.decode_batch (PIL) then deepclust.embedder.Embedder, in turn;
* workers: decode_batch in torch DataLoader worker processes (--workers, default: all cores
           but two), pinned-memory batches, Embedder.embed_stream overlapping the host->device
           copy and the next batch with the forward pass;
* device:  JPEG bytes decoded on the model's device (deepclust.gpu_decode: nvJPEG batched
           decode + torch resize/crop on CUDA) by Embedder(decode_on_device=True).embed_stream,
           which decodes batch i+1 while batch i's forward pass runs.

It also prints each decode path alone (no model) and the cosine similarity of every mode's
embeddings to the serial (PIL) ones, row by row. No Ray needed.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run this checkout's deepclust, not an installed copy
    sys.path.insert(0, str(ROOT))

from deepclust.embedder import CPU_CHUNK, Embedder  # noqa: E402
from deepclust.gpu_decode import decode_batch_on_device  # noqa: E402
from deepclust.preprocess import Preprocess, decode_batch, normalize_images  # noqa: E402

CIFAR = Path("shared") / "data" / "cifar10" / "test.parquet"
# ../shared next to the checkout (dev machines), or shared/ inside a copied working tree
SHARED = next(
    (d / CIFAR for d in (ROOT.parent, ROOT) if (d / CIFAR).is_file()), ROOT.parent / CIFAR
)
MODES = ("bare", "serial", "workers", "device")


def load_images(n: int) -> tuple[list[bytes], str]:
    """``n`` encoded JPEGs and where they come from."""
    if SHARED.is_file():
        import pyarrow.parquet as pq

        pool = pq.read_table(SHARED, columns=["image"]).column("image").to_pylist()
        where = "CIFAR-10 test JPEGs" + (" (cycled)" if n > len(pool) else "")
        return [pool[i % len(pool)] for i in range(n)], where
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        small = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)  # smooth after upsampling
        img = Image.fromarray(small).resize((32, 32), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out, f"synthetic 32x32 JPEGs ({SHARED} not found)"


class DecodedBatches(torch.utils.data.Dataset):
    """Item ``i`` = batch ``i`` decoded by PIL (decode_batch) in a DataLoader worker."""

    def __init__(self, batches: list[dict[str, Any]], preprocess: Preprocess) -> None:
        self.batches, self.preprocess = batches, preprocess

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        out = decode_batch(self.batches[i], self.preprocess)
        return {
            "idx": torch.from_numpy(np.asarray(out["idx"], dtype=np.int64)),
            "label": torch.from_numpy(np.asarray(out["label"], dtype=np.int64)),
            "image": torch.from_numpy(out["image"]),  # (B, S, S, 3) uint8, shared memory
            "error": [str(e) for e in out["error"]],
        }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    sync(device)
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - t0, result


def collect(outputs: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate embedder outputs, rows sorted by ``idx``."""
    outs = list(outputs)
    idx = np.concatenate([o["idx"] for o in outs])
    order = np.argsort(idx, kind="stable")
    return {
        "idx": idx[order],
        "embedding": np.concatenate([o["embedding"] for o in outs])[order],
        "error": np.concatenate([o["error"] for o in outs])[order],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda[:i]")
    p.add_argument(
        "--backbone",
        default=None,
        help="default: vit_base_patch16_224 with random weights on CUDA, efficientnet_lite0 on CPU",
    )
    p.add_argument("--random-weights", action="store_true", help="skip weight loading (speed only)")
    p.add_argument("--n", type=int, default=None, help="images timed (default 4096 CUDA, 256 CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="default 256 CUDA, 64 CPU")
    p.add_argument(
        "--workers", type=int, default=max(1, (os.cpu_count() or 1) - 2), help="decode processes"
    )
    p.add_argument("--prefetch", type=int, default=4, help="batches queued per worker")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    args = p.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := sorted(set(modes) - set(MODES)):
        p.error(f"unknown mode(s) {', '.join(unknown)}; valid: {', '.join(MODES)}")

    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    backbone = args.backbone or ("vit_base_patch16_224" if cuda else "efficientnet_lite0")
    random_weights = args.random_weights or (cuda and args.backbone is None)
    n = args.n or (4096 if cuda else 256)
    bs = args.batch_size or (256 if cuda else 64)

    emb = Embedder(backbone, pretrained=not random_weights, device=args.device)
    pp, dev = emb.preprocess, emb.device
    images, where = load_images(n)
    batches = []
    for s in range(0, n, bs):
        encoded = np.empty(min(bs, n - s), dtype=object)
        encoded[:] = images[s : s + bs]
        batches.append(
            {
                "idx": np.arange(s, s + len(encoded)),
                "label": np.zeros(len(encoded), dtype=np.int64),
                "encoded": encoded,
            }
        )
    fake = torch.randint(0, 255, (bs, pp.input_size, pp.input_size, 3), dtype=torch.uint8)
    ready = normalize_images(fake.to(dev), pp)

    @torch.inference_mode()
    def bare(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=emb.autocast):
            return emb.model.forward_head(emb.model.forward_features(x), pre_logits=True)

    def run_bare() -> None:
        for b in batches:
            bare(ready[: len(b["idx"])])

    def run_serial() -> list[dict[str, np.ndarray]]:
        emb.decode_on_device = False
        return [emb(decode_batch(b, pp)) for b in batches]

    loader = None
    if "workers" in modes:
        loader = torch.utils.data.DataLoader(
            DecodedBatches(batches, pp),
            batch_size=None,  # items are whole batches
            shuffle=False,
            num_workers=args.workers,
            pin_memory=dev.type == "cuda",
            prefetch_factor=args.prefetch,
            persistent_workers=True,
        )

    # iter() on a DataLoader with persistent workers first drains the previous epoch's queued
    # batches: the warm-ups make the fresh iterator so that the drain is not timed
    fresh: dict[str, Any] = {}

    def run_workers() -> list[dict[str, np.ndarray]]:
        emb.decode_on_device = False
        return list(emb.embed_stream(fresh.pop("it")))

    def run_device() -> list[dict[str, np.ndarray]]:
        emb.decode_on_device = True
        return list(emb.embed_stream(batches))

    def decode_only_workers() -> None:
        for _ in fresh.pop("it"):
            pass

    def decode_only_device() -> None:
        for b in batches:
            decode_batch_on_device(b, pp, dev)

    warm_batches = 2 if dev.type == "cuda" else 1  # CPU: keep the smoke run short

    def warm_bare() -> None:
        for _ in range(warm_batches):
            bare(ready)

    def warm_serial() -> None:
        emb.decode_on_device = False
        emb(decode_batch(batches[0], pp))

    def warm_workers(embed: bool = True) -> None:  # starts the workers; iter() resets them
        emb.decode_on_device = False
        it = iter(loader)
        for _ in range(min(warm_batches, len(batches))):
            batch = next(it)
            if embed:
                emb(batch)
        fresh["it"] = iter(loader)

    def warm_device() -> None:  # nvJPEG initialisation, allocator
        emb.decode_on_device = True
        list(emb.embed_stream(batches[:warm_batches]))

    runners = {"bare": run_bare, "serial": run_serial, "workers": run_workers, "device": run_device}
    # one untimed pass over a batch or two before each mode: lazy init, allocator, worker start
    warm = {
        "bare": warm_bare,
        "serial": warm_serial,
        "workers": warm_workers,
        "device": warm_device,
    }

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(
        f"backbone={backbone}{' (random weights)' if random_weights else ''} device={name} "
        f"images={n} ({where}) batch={bs} input={pp.input_size}px "
        f"workers={args.workers} cpus={os.cpu_count()} torch_threads={torch.get_num_threads()} "
        f"autocast_bf16={emb.autocast}"
    )
    seconds: dict[str, float] = {}
    results: dict[str, dict[str, np.ndarray]] = {}
    for mode in modes:
        warm[mode]()
        seconds[mode], out = timed(dev, runners[mode])
        if out is not None:
            results[mode] = collect(out)
    decode_only: dict[str, float] = {}
    if "workers" in modes:
        warm_workers(embed=False)
        decode_only["workers"], _ = timed(dev, decode_only_workers)
    if "device" in modes:
        decode_only["device"], _ = timed(dev, decode_only_device)

    labels = {
        "bare": f"bare forward, one call per batch{' (bf16)' if emb.autocast else ''}",
        "serial": "serial: PIL decode, then embed",
        "workers": f"workers: {args.workers} decode procs -> embed",
        "device": "device: decode on device -> embed",
    }
    print(f"{'mode':<40} {'seconds':>8} {'img/s':>9} {'vs bare':>8}")
    for mode in modes:
        rate = n / seconds[mode]
        ratio = f"{rate / (n / seconds['bare']):8.2f}" if "bare" in seconds else "     n/a"
        print(f"{labels[mode]:<40} {seconds[mode]:8.2f} {rate:9.1f} {ratio}")
    for label, sec in decode_only.items():
        print(f"{'decode only: ' + label:<40} {sec:8.2f} {n / sec:9.1f}")
    if "serial" in results:
        ref = results["serial"]
        for mode, res in results.items():
            if mode == "serial":
                continue
            cos = (res["embedding"] * ref["embedding"]).sum(1)
            same_errors = bool((res["error"] == ref["error"]).all())
            print(
                f"parity {mode} vs serial: cosine min {cos.min():.6f} mean {cos.mean():.6f}, "
                f"same error rows {same_errors}"
            )
    if dev.type == "cpu":  # the embedder's chunked forward against one call per batch
        pixels = decode_batch(batches[0], pp)["image"]
        x = normalize_images(torch.from_numpy(pixels), pp)
        whole = torch.nn.functional.normalize(bare(x).float().flatten(1), dim=1)
        chunked = torch.from_numpy(emb.embed_images(pixels))
        print(
            f"parity chunks of {CPU_CHUNK}+ rows vs one {len(x)}-image call: max abs diff "
            f"{(whole - chunked).abs().max().item():.2e}"
        )
    bad = int((results[next(iter(results))]["error"] != "").sum()) if results else 0
    if bad:
        print(f"warning: {bad} image(s) failed to decode (embedded as zeros)")


if __name__ == "__main__":
    main()
